"""The daemon: the configured jobs on an APScheduler scheduler, plus metrics and health checks.

Each replica keeps its own in-memory job store (schedulers must not share one); replicas
coordinate in PostgreSQL instead, through the jobs' advisory locks and the run ledger.
Metrics and the run log line hang on APScheduler's events, not inside the jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from sessionkeeper.jobs import JOB_NAMES, partitions, session_archival
from sessionkeeper.jobs.runner import JobFailed, RunReport, describe_error, run_job
from sessionkeeper.jobs.sql import QUERIES
from store.errors import ConfigurationError

from .config import Config
from .endpoints import MetricsServer
from .logs import RunLog
from .metrics import DaemonMetrics
from .pacing import PacedRun, paced

log = logging.getLogger("sessionkeeper")
GAUGE_JOB_ID = "_domain_gauges"


def job_conninfo(conninfo: str, config: Config) -> str:
    """``conninfo`` with the daemon's session settings.

    The timeouts keep a job from ever holding locks the online store needs for long; the
    server-side TCP keepalives end the session (and its advisory locks) of a replica whose
    host vanished without closing the connection.
    """
    params = conninfo_to_dict(conninfo)
    options = [
        str(params.get("options") or ""),
        f"-c statement_timeout={config.statement_timeout_seconds * 1000}",
        f"-c lock_timeout={config.lock_timeout_seconds * 1000}",
        "-c idle_in_transaction_session_timeout=60000",
        "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
    ]
    params["options"] = " ".join(o for o in options if o)
    params.setdefault("connect_timeout", "10")
    params["application_name"] = "sessionkeeper-daemon"
    return make_conninfo("", **params)


class Daemon:
    def __init__(self, config: Config, conninfo: str, head_revision: str) -> None:
        self.config = config
        self.head_revision = head_revision
        self.stopping = threading.Event()
        self.log_run = RunLog(config.replica_id)
        self.metrics = DaemonMetrics(
            JOB_NAMES, {name: job.window for name, job in config.jobs.items()}
        )
        # Disabled jobs too: the alerts read the interval, and a job's own series tell
        # whether it runs.
        self.metrics.set_intervals(
            {name: job.schedule.typical_period_seconds() for name, job in config.jobs.items()}
        )
        self.job_conninfo = job_conninfo(conninfo, config)
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.job_conninfo,
            min_size=1,
            max_size=config.pool_size,
            kwargs={"autocommit": True},
            open=False,
            # A connection that died with a server restart is replaced, not handed out.
            check=ConnectionPool.check_connection,
            name="sessionkeeper",
            timeout=10,
        )
        self.metrics.add_pool(self.pool.get_stats)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            jobstores={"default": MemoryJobStore()},
            # The gauges have their own thread, so a slow count never delays a job.
            executors={
                "default": ThreadPoolExecutor(config.workers),
                "gauges": ThreadPoolExecutor(1),
            },
            job_defaults={"max_instances": 1},
        )
        self.http: MetricsServer | None = None

    def start(self) -> None:
        host, port = self.config.metrics_host, self.config.metrics_port
        try:
            self.http = MetricsServer(
                host,
                port,
                self.metrics.registry,
                self.ready,
                read_timeout=self.config.metrics_read_timeout_seconds,
                max_connections=self.config.metrics_max_connections,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port} (SESSIONKEEPER_METRICS_HOST, "
                f"SESSIONKEEPER_METRICS_PORT): {exc.strerror or exc}"
            ) from None
        self.pool.open(wait=False)
        self.http.start()
        host, port = self.http.address
        log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", host, port)
        for name, job in self.config.jobs.items():
            if not job.enabled:
                log.info("job %s disabled", name)
                continue
            self.scheduler.add_job(
                self._run_scheduled,
                trigger=job.schedule.trigger(job.jitter_seconds),
                args=(name,),
                id=name,
                name=name,
                coalesce=job.coalesce,
                misfire_grace_time=job.misfire_grace_seconds,
                max_instances=1,
            )
        self.scheduler.add_job(
            self.refresh_gauges,
            trigger="interval",
            seconds=self.config.gauge_interval_seconds,
            id=GAUGE_JOB_ID,
            executor="gauges",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            misfire_grace_time=self.config.gauge_interval_seconds,
        )
        self.scheduler.add_listener(
            self._on_event,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        self.scheduler.start()
        for job in self.scheduler.get_jobs():
            if job.id in JOB_NAMES:
                config = self.config.jobs[job.id]
                window = f", in its window {config.window}" if config.window else ""
                log.info(
                    "job %s %s%s, next run %s",
                    job.id,
                    config.schedule.describe(),
                    window,
                    job.next_run_time,
                )

    def stop(self) -> None:
        """Stop after the batches in progress: jobs see ``stopping`` between batches, and a job
        pausing between two batches stops at once."""
        self.stopping.set()
        self.scheduler.shutdown(wait=True)
        if self.http is not None:
            self.http.stop()
        self.pool.close()

    # -- jobs and events -----------------------------------------------------------------------

    def _run_scheduled(self, name: str) -> RunReport:
        job = self.config.jobs[name]
        now = datetime.now(UTC)
        with self._paced(name) as paced_run:
            return run_job(
                lambda: self.pool.connection(),
                name,
                job.settings,
                replica_id=self.config.replica_id,
                now=now,
                slot=job.schedule.slot(now).isoformat(),
                pause=paced_run.pause,
                begin=paced_run.begin,
                ledger_keep_seconds=self.config.ledger_retention_seconds,
                store=self.config.store,
                window=job.window,
            )

    @contextlib.contextmanager
    def _paced(self, name: str) -> Iterator[PacedRun]:
        """The pause between the job's batches: a stop request ends it at once, and with
        yield_to_bots on, a Pacer lengthens it while the bots feel the job."""
        try:
            with paced(
                name,
                self.config.yielding,
                self.job_conninfo,
                self.stopping.wait,
                lambda state, yielded: self.metrics.pace(name, state, yielded),
            ) as paced_run:
                yield paced_run
        finally:
            # The run is over: it takes no extra pause now (the probe's last figures stay).
            self.metrics.pace_ended(name)

    def _on_event(self, event: JobEvent) -> None:
        if event.job_id not in JOB_NAMES:
            return
        if event.code == EVENT_JOB_MISSED:
            self.metrics.observe_missed(event.job_id)
            log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.metrics.observe_missed(event.job_id)
            log.warning("job %s still running at its next slot: that run is dropped", event.job_id)
            return
        assert isinstance(event, JobExecutionEvent)
        if event.code == EVENT_JOB_EXECUTED:
            report: RunReport = event.retval
        elif isinstance(event.exception, JobFailed):
            report = event.exception.report
            cause = event.exception.__cause__
            if cause is not None and not isinstance(cause, psycopg.Error | PoolTimeout):
                # Not a database problem: most likely a bug, worth its traceback.
                log.error("job %s raised", event.job_id, exc_info=cause)
        else:
            report = RunReport(
                event.job_id, "failure", 0, 0.0, time.time(), error=describe_error(event.exception)
            )
            log.error("job %s raised", event.job_id, exc_info=event.exception)
        self.metrics.observe(report)
        self.log_run(report)

    # -- health --------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready when the database answers and is migrated to this code's schema."""
        try:
            with self.pool.connection(timeout=3) as conn:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.errors.UndefinedTable:
            self.metrics.database_up.set(1)
            return False, f"schema not migrated, expected {self.head_revision}"
        except Exception as exc:
            self.metrics.database_up.set(0)
            return False, f"database unavailable: {describe_error(exc)}"
        self.metrics.database_up.set(1)
        if row is None or row[0] != self.head_revision:
            return False, f"schema at {row and row[0]}, expected {self.head_revision}"
        return True, "ready"

    def refresh_gauges(self) -> None:
        try:
            with self.pool.connection(timeout=5) as conn:
                params = self._gauge_params()
                values: dict[str, Any] = {}
                for query in ("domain_gauges", "checkpoint_gauges"):
                    cursor = conn.execute(QUERIES[query], params)
                    row = cursor.fetchone()
                    names = [column.name for column in cursor.description or ()]
                    values.update(zip(names, row or (), strict=False))
                existing = partitions.list_partitions(conn)
                lead = {
                    table: partitions.ahead(existing, table, params["now"])
                    for table in partitions.KEYS
                }
        except psycopg.errors.UndefinedTable:
            # Not migrated yet: the database answered (as /readyz says), there is nothing to count.
            self.metrics.database_up.set(1)
            return
        except Exception as exc:
            self.metrics.database_up.set(0)
            log.debug("gauges not refreshed: %s", describe_error(exc))
            return
        self.metrics.database_up.set(1)
        if values:
            self.metrics.set_domain(values)
        self.metrics.set_partitions_ahead(lead)

    def _gauge_params(self) -> dict[str, Any]:
        """The archival backlog is counted with session_archival's own idle age and clock."""
        archival = self.config.jobs.get("session_archival")
        settings = archival.settings if archival else session_archival.Settings()
        # The checkpoint backlog likewise with checkpoint_retention's (0 while it is disabled).
        retention = self.config.jobs.get("checkpoint_retention")
        idle = retention.settings.idle_seconds if retention and retention.enabled else 0
        return {
            "now": datetime.now(UTC),
            "idle_seconds": settings.idle_seconds,
            "checkpoint_idle_seconds": idle,
        }
