"""Prometheus metrics of the daemon (``endpoints`` serves them).

Series names are a contract (DESIGN.md): dashboards and alerts use them. Every job's label
sets exist from start-up, so alerts never see a missing series.

The maintenance job is in the label ``job_name``. Until 0.3.0 it was in ``job``, which collides
with the target label Prometheus gives every series (the scrape job), so scraping needed
``honor_labels``. This release exports both with the same value (expand); ``job`` is
deprecated and goes in the next release (contract), once dashboards and alerts use ``job_name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sessionkeeper.jobs.partitions import KEYS as PARTITIONED_TABLES
from sessionkeeper.jobs.runner import WINDOW_CLOSED, RunReport, utc_now
from sessionkeeper.jobs.window import Window
from store.metrics import pool_families

from .pacing import PaceState

# A stopped run (a shutdown or Ctrl-C at a batch boundary) is neither a success nor a failure.
OUTCOMES = ("success", "failure", "skipped", "stopped")
# The job's labels: job_name, and job (deprecated, removed in the next release).
JOB_LABELS = ["job", "job_name"]
# From a few milliseconds (nothing to do) to an hour (a large backlog).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
DOMAIN_GAUGES = {
    "sessions_active": "Sessions in the online sessions table.",
    "sessions_archived": "Sessions in the archive.",
    "proactive_users": "Users in the published proactive-user list.",
    "rate_limit_rows": "Rate-limit window rows.",
    "sessions_archivable": "Online sessions idle longer than session_archival's idle_seconds.",
    "sessions_archivable_age_seconds": (
        "How long the longest-waiting archivable session has been archivable (0: none)."
    ),
    "langgraph_threads_expired": (
        "LangGraph threads idle longer than checkpoint_retention's idle_seconds (0: off)."
    ),
    "langgraph_threads_expired_age_seconds": (
        "How long the oldest of those threads has been past idle_seconds (0: none)."
    ),
}


class DaemonMetrics:
    def __init__(
        self,
        job_names: Sequence[str],
        windows: Mapping[str, Window | None] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """``windows``: each job's maintenance window (none given: no job has one), read
        against ``clock()`` at scrape time."""
        self.registry = CollectorRegistry()
        r = self.registry
        # process_start_time_seconds (restarts, uptime), CPU, memory, open files.
        ProcessCollector(registry=r)
        self.runs = Counter(
            "sessionkeeper_job_runs", "Job runs by outcome.", [*JOB_LABELS, "outcome"], registry=r
        )
        self.duration = Histogram(
            "sessionkeeper_job_duration_seconds",
            "Duration of job runs that were not skipped.",
            JOB_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "sessionkeeper_job_last_success_timestamp_seconds",
            "Unix time of the job's last successful run on this replica (0: none yet).",
            JOB_LABELS,
            registry=r,
        )
        self.rows = Counter(
            "sessionkeeper_job_rows",
            "Rows archived, deleted, rolled up or loaded by the job.",
            JOB_LABELS,
            registry=r,
        )
        self.missed = Counter(
            "sessionkeeper_job_missed",
            "Scheduled runs dropped: too late (misfire grace time) or the last run still going.",
            JOB_LABELS,
            registry=r,
        )
        self.interval = Gauge(
            "sessionkeeper_job_interval_seconds",
            "The job's configured schedule interval (cron: the median gap between fire times).",
            JOB_LABELS,
            registry=r,
        )
        self.database_up = Gauge(
            "sessionkeeper_database_up",
            "1 when the database answered the daemon's last check, else 0.",
            registry=r,
        )
        self.partitions_ahead = Gauge(
            "sessionkeeper_partitions_ahead",
            "Time partitions of the table made ahead of the current one (partition_maintenance"
            " keeps its `ahead` setting; 0: the bots' rows of now are refused).",
            ["table"],
            registry=r,
        )
        for table in PARTITIONED_TABLES:
            # Unknown (NaN, which no alert threshold matches) until the first gauge refresh.
            self.partitions_ahead.labels(table).set(float("nan"))
        # Yielding to the bots (pacing.py): the signal, its budget, and what the job gives up.
        self.probe = Gauge(
            "sessionkeeper_job_probe_seconds",
            "The yield's signal at the job's last batch boundary: p90 of the last probes (a read"
            " and a durable write, as a turn does; the bots' view).",
            ["job_name"],
            registry=r,
        )
        self.probe_budget = Gauge(
            "sessionkeeper_job_probe_budget_seconds",
            "Probe latency above which the job yields: its idle baseline plus the budget.",
            ["job_name"],
            registry=r,
        )
        self.yield_pause = Gauge(
            "sessionkeeper_job_yield_pause_seconds",
            "Extra pause the job now takes between batches because the bots feel it (0: none,"
            " or not running).",
            ["job_name"],
            registry=r,
        )
        self.yielded = Counter(
            "sessionkeeper_job_yielded_seconds",
            "Time jobs spent paused to yield to the bots.",
            ["job_name"],
            registry=r,
        )
        # Maintenance windows: runs their window's close stopped, and each window's state, read
        # at scrape time.
        windows = windows or {}
        r.register(_WindowCollector({job: windows.get(job) for job in job_names}, clock))
        self.window_stops = Counter(
            "sessionkeeper_job_window_stops",
            "Runs stopped at a batch boundary because the job's maintenance window closed"
            " (the rest waits for the next window).",
            ["job_name"],
            registry=r,
        )
        self.domain = {
            name: Gauge(f"sessionkeeper_{name}", text, registry=r)
            for name, text in DOMAIN_GAUGES.items()
        }
        for job in job_names:
            for outcome in OUTCOMES:
                self.runs.labels(job, job, outcome)
            for per_job in (self.duration, self.last_success, self.rows, self.missed):
                per_job.labels(job, job)
            # New series carry job_name only: the deprecated job label is not added to them.
            for metric in (
                self.probe,
                self.probe_budget,
                self.yield_pause,
                self.yielded,
                self.window_stops,
            ):
                metric.labels(job)

    def observe(self, report: RunReport) -> None:
        job = report.job
        self.runs.labels(job, job, report.outcome).inc()
        if report.outcome == "skipped":
            return
        if report.details.get("reason") == WINDOW_CLOSED:
            self.window_stops.labels(job).inc()
        self.duration.labels(job, job).observe(report.duration_seconds)
        # A failed run counts the rows of the batches it committed before failing.
        self.rows.labels(job, job).inc(report.rows)
        if report.outcome == "success":
            self.last_success.labels(job, job).set(report.finished_at)
            if report.job == "proactive_reload" and "size" in report.details:
                self.domain["proactive_users"].set(report.details["size"])

    def pace(self, job: str, state: PaceState, yielded: float) -> None:
        self.probe.labels(job).set(state.signal_seconds)
        self.probe_budget.labels(job).set(state.limit_seconds)
        self.yield_pause.labels(job).set(state.extra_pause_seconds)
        self.yielded.labels(job).inc(yielded)

    def pace_ended(self, job: str) -> None:
        self.yield_pause.labels(job).set(0)

    def observe_missed(self, job: str) -> None:
        self.missed.labels(job, job).inc()

    def set_intervals(self, seconds: dict[str, float]) -> None:
        for job, value in seconds.items():
            self.interval.labels(job, job).set(value)

    def set_domain(self, values: dict[str, Any]) -> None:
        for name, gauge in self.domain.items():
            if name in values:
                gauge.set(values[name])

    def set_partitions_ahead(self, lead: dict[str, int]) -> None:
        for table, value in lead.items():
            self.partitions_ahead.labels(table).set(value)

    def add_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PoolCollector(stats))


class _WindowCollector(Collector):
    """Whether each job's maintenance window is open, read at scrape time (``clock()``)."""

    def __init__(self, windows: Mapping[str, Window | None], clock: Callable[[], datetime]) -> None:
        self.windows = windows
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        is_open = GaugeMetricFamily(
            "sessionkeeper_job_window_open",
            "1 while the job may run (its maintenance window is open, or it has none), 0 while"
            " it waits for its window.",
            labels=["job_name"],
        )
        opens = GaugeMetricFamily(
            "sessionkeeper_job_window_next_open_timestamp_seconds",
            "Unix time the job's maintenance window opens next (0: open now, or no window).",
            labels=["job_name"],
        )
        opened = GaugeMetricFamily(
            "sessionkeeper_job_window_opened_timestamp_seconds",
            "Unix time the job's maintenance window last opened (0: no window); the alerts count"
            " a windowed job's intervals from there.",
            labels=["job_name"],
        )
        for job, window in self.windows.items():
            waiting = window is not None and not window.is_open(now)
            is_open.add_metric([job], 0 if waiting else 1)
            opens.add_metric([job], window.next_open(now).timestamp() if window and waiting else 0)
            opened.add_metric([job], window.last_opened(now).timestamp() if window else 0)
        yield is_open
        yield opens
        yield opened


class _PoolCollector(Collector):
    """The daemon's connection-pool figures, read from psycopg_pool at scrape time."""

    GAUGES = {
        "pool_min": "Minimum connections the pool keeps.",
        "pool_max": "Maximum connections of the pool.",
        "pool_size": "Connections in the pool (in use, idle, or being opened).",
        "pool_available": "Idle connections in the pool.",
        "requests_waiting": "Requests waiting for a connection.",
    }
    COUNTERS = {
        "connections_num": "Connection attempts.",
        "connections_errors": "Failed connection attempts.",
        "connections_lost": "Connections found broken and discarded.",
        "requests_errors": "Requests that got no connection (timeout or error).",
    }

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        return pool_families(
            "sessionkeeper_db_pool_", self.GAUGES, self.COUNTERS, {(): self.stats()}, []
        )
