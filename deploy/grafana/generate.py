"""Generates the sessionkeeper Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON files are checked in, so that Grafana's file provisioning (and anyone importing them by
hand) needs nothing but the files; this script is their source. After changing it run

    python deploy/grafana/generate.py

and commit both. ``--check`` exits 1 when a committed file differs from what this script makes
(the test suite checks the same thing). Every panel query uses the daemon's metrics, or in the
store dashboard's "Bots" row those of store.metrics; the test suite evaluates each one against a
real Prometheus scraping a real daemon and a bot.

Template variables: ``instance`` (daemon replica) and ``job`` (maintenance job, the daemon's
label ``job_name``: ``job`` is Prometheus's scrape job, and no honor_labels is needed); the store
dashboard adds ``bot`` (a bot's scrape instance). All allow several values and "All" (the
regex ``.*``), so every selector matches them with ``=~``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

# The datasources that provisioning/datasources/*.yaml create, by uid. The daemon's metrics
# come from Prometheus; usage per channel and message counts are read from PostgreSQL (the
# usage_daily rollups are the data, and the daemon exports no per-channel series).
DATASOURCE = {"type": "prometheus", "uid": "sessionkeeper-prometheus"}
SQL_DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "sessionkeeper-postgres"}

# Selectors for the two template variables.
INSTANCE = 'instance=~"$instance"'
JOB = 'job_name=~"$job"'
BY_JOB = f"{INSTANCE}, {JOB}"
# The daemon's process_* series carry the scrape job's label, like the alerts expect (the
# maintenance job is in job_name: no honor_labels).
PROCESS = f'job="sessionkeeper", {INSTANCE}'
# Bots (store.metrics) are scraped as their own job; the store dashboard selects them by
# instance with the variable ``bot``.
BOT = 'instance=~"$bot"'
BOT_CALLS = "sessionkeeper_store_operation_duration_seconds"

Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def sql_target(sql: str, fmt: str = "time_series") -> dict[str, Any]:
    """A PostgreSQL query; for time series the columns are ``time``, ``metric``, value."""
    return {
        "datasource": SQL_DATASOURCE,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": sql,
        "refId": "A",
    }


def panel(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    kind: str = "timeseries",
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    overrides: Sequence[dict[str, Any]] = (),
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 20 if stack else 0,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "showPoints": "never",
        }
    options: dict[str, Any] = {}
    if kind == "timeseries":
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    for ref, item in zip("ABCDEFGH", targets, strict=False):
        item["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": targets[0]["datasource"],
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options,
        "targets": targets,
        "gridPos": {"w": width, "h": height},
    }


def dashed(legend_pattern: str) -> dict[str, Any]:
    """An override drawing the series whose legend matches ``legend_pattern`` (a regex) as a
    dashed line: a limit drawn beside what is measured against it."""
    return {
        "matcher": {"id": "byRegexp", "options": legend_pattern},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
        ],
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(panels: list[Panel]) -> list[Panel]:
    """Gives panels ids and grid positions, left to right, rows on a line of their own."""
    x = y = line_height = 0
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        if item["type"] == "row":
            y += line_height
            item["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            x, y, line_height = 0, y + 1, 0
            continue
        grid = item["gridPos"]
        if x + grid["w"] > 24:
            x, y, line_height = 0, y + line_height, 0
        grid.update(x=x, y=y)
        x += grid["w"]
        line_height = max(line_height, grid["h"])
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["sessionkeeper"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["sessionkeeper"],
                "asDropdown": False,
                "title": "sessionkeeper",
            }
        ],
        "templating": {
            "list": [
                variable(
                    "instance", "Instance", "label_values(sessionkeeper_job_runs_total, instance)"
                ),
                variable(
                    "job",
                    "Job",
                    'label_values(sessionkeeper_job_runs_total{instance=~"$instance"}, job_name)',
                ),
                *variables,
            ]
        },
        "panels": layout(panels),
    }


def jobs_dashboard() -> dict[str, Any]:
    runs = f"sessionkeeper_job_runs_total{{{BY_JOB}}}"
    buckets = f"sessionkeeper_job_duration_seconds_bucket{{{BY_JOB}}}"
    return dashboard(
        "sessionkeeper-jobs",
        "sessionkeeper / maintenance jobs",
        "Runs, outcomes, durations and rows of the sessionkeeper daemon's maintenance jobs.",
        [
            row("Runs"),
            panel(
                "Runs by outcome",
                "Job runs per second, all replicas together. `skipped` runs found another "
                "replica holding the job's lock or running the slot, or fell outside the job's "
                "maintenance window (each replica counts each such slot); `stopped` runs were "
                "cut short at a batch boundary by a shutdown, Ctrl-C or the window's close.",
                [
                    target(
                        f"sum by (job_name, outcome) (rate({runs}[$__rate_interval]))",
                        "{{job_name}} {{outcome}}",
                    )
                ],
                unit="ops",
                stack=True,
            ),
            panel(
                "Failures in the last hour",
                "Failed runs per job over the last hour (alert: SessionkeeperJobFailing).",
                [
                    target(
                        "sum by (job_name) (increase(sessionkeeper_job_runs_total"
                        f'{{{BY_JOB}, outcome="failure"}}[1h]))',
                        "{{job_name}}",
                    )
                ],
                kind="stat",
                width=6,
            ),
            panel(
                "Last success age",
                "Time since each job last succeeded on any replica (alert: "
                "SessionkeeperJobNotSucceeding). Jobs that have not succeeded since their "
                "replica started are not shown.",
                [
                    target(
                        "time() - max by (job_name) "
                        f"(sessionkeeper_job_last_success_timestamp_seconds{{{BY_JOB}}} > 0)",
                        "{{job_name}}",
                    )
                ],
                kind="stat",
                unit="s",
                width=6,
            ),
            row("Replicas"),
            panel(
                "Uptime",
                "Time since each replica's process started (process_start_time_seconds).",
                [target(f"time() - process_start_time_seconds{{{PROCESS}}}", "{{instance}}")],
                kind="stat",
                unit="s",
                width=6,
            ),
            panel(
                "Restarts in the last 24 hours",
                "Times each replica's process started anew within the last day (changes of "
                "process_start_time_seconds). A container replaced under a new address shows "
                "as a new instance instead.",
                [
                    target(
                        f"changes(process_start_time_seconds{{{PROCESS}}}[24h])",
                        "{{instance}}",
                    )
                ],
                kind="stat",
                width=6,
            ),
            panel(
                "Resident memory",
                "Resident memory of each replica's process.",
                [target(f"process_resident_memory_bytes{{{PROCESS}}}", "{{instance}}")],
                unit="bytes",
            ),
            row("Durations"),
            panel(
                "Run duration, p50 and p95",
                "Quantiles of the job run duration histogram.",
                [
                    target(
                        "histogram_quantile(0.95, sum by (job_name, le) "
                        f"(rate({buckets}[$__rate_interval])))",
                        "{{job_name}} p95",
                    ),
                    target(
                        "histogram_quantile(0.5, sum by (job_name, le) "
                        f"(rate({buckets}[$__rate_interval])))",
                        "{{job_name}} p50",
                    ),
                ],
                unit="s",
            ),
            panel(
                "Mean run duration",
                "Total time spent in runs divided by the number of runs.",
                [
                    target(
                        "sum by (job_name) (rate(sessionkeeper_job_duration_seconds_sum"
                        f"{{{BY_JOB}}}[$__rate_interval])) / sum by (job_name) "
                        f"(rate(sessionkeeper_job_duration_seconds_count{{{BY_JOB}}}"
                        "[$__rate_interval]))",
                        "{{job_name}}",
                    )
                ],
                unit="s",
            ),
            row("Rows"),
            panel(
                "Rows per job",
                "Rows archived, deleted, rolled up or loaded per second.",
                [
                    target(
                        "sum by (job_name) (rate(sessionkeeper_job_rows_total"
                        f"{{{BY_JOB}}}[$__rate_interval]))",
                        "{{job_name}}",
                    )
                ],
                unit="short",
                stack=True,
            ),
            panel(
                "Rows in the last 24 hours",
                "Rows each job handled over the last day.",
                [
                    target(
                        "sum by (job_name) "
                        f"(increase(sessionkeeper_job_rows_total{{{BY_JOB}}}[24h]))",
                        "{{job_name}}",
                    )
                ],
                kind="bargauge",
            ),
            panel(
                "Maintenance windows",
                "1 while a job may run (its window is open, or it has none), 0 while it waits "
                "for its window (docs/daemon.md, Maintenance windows).",
                [
                    target(
                        f"max by (job_name) (sessionkeeper_job_window_open{{{BY_JOB}}})",
                        "{{job_name}}",
                    )
                ],
            ),
            panel(
                "Runs stopped by a window's close",
                "Runs that stopped at a batch boundary because their window closed; the next "
                "window's run resumes them.",
                [
                    target(
                        "sum by (job_name) "
                        f"(increase(sessionkeeper_job_window_stops_total{{{BY_JOB}}}[24h]))",
                        "{{job_name}}",
                    )
                ],
                kind="bargauge",
            ),
            *yield_row(),
        ],
    )


def yield_row() -> list[Panel]:
    """Yielding by measurement (sessionkeeper/daemon/pacing.py): what the bots' probe sees while
    a job runs, the budget past which the job slows down, and what it gives up for them."""

    def gauge(name: str) -> str:
        # Per replica: each measures its own idle baseline. A replica's job that has not reached
        # a batch boundary since the replica started has measured nothing (0): not drawn.
        return f"max by (instance, job_name) (sessionkeeper_job_{name}{{{BY_JOB}}})"

    return [
        row("Yielding to the bots"),
        panel(
            "Probe latency against its budget",
            "The yield's signal (the bots' view: p90 of the last 40 probes, each a read of "
            "users and a durable write, as a turn does) at each job's last batch boundary, and "
            "its budget (dashed): the idle baseline plus yield_budget. Above its budget the "
            "job pauses longer between batches (docs/daemon.md, Yielding by measurement). "
            "Jobs show once they have reached a batch boundary on the replica.",
            [
                target(f"{gauge('probe_seconds')} > 0", "{{job_name}} probe ({{instance}})"),
                target(
                    f"{gauge('probe_budget_seconds')} > 0", "{{job_name}} budget ({{instance}})"
                ),
            ],
            unit="s",
            overrides=[dashed(".* budget .*")],
        ),
        panel(
            "Extra pause between batches",
            "The pace: the extra pause each job now takes between two batches because the bots "
            "feel it (0: its own pace; it doubles while the probe is over budget, up to "
            "yield_max_pause_seconds, and shrinks by yield_step_seconds once it is under).",
            [target(gauge("yield_pause_seconds"), "{{job_name}} ({{instance}})")],
            unit="s",
            width=6,
        ),
        panel(
            "Time paused to yield",
            "Share of the time each job spent in extra pauses for the bots (seconds paused per "
            "second, all replicas together).",
            [
                target(
                    "sum by (job_name) (rate(sessionkeeper_job_yielded_seconds_total"
                    f"{{{BY_JOB}}}[$__rate_interval]))",
                    "{{job_name}}",
                )
            ],
            unit="percentunit",
            width=6,
        ),
    ]


def store_dashboard() -> dict[str, Any]:
    def pool(name: str) -> str:
        return f"sessionkeeper_db_pool_{name}{{{INSTANCE}}}"

    def domain(name: str) -> str:
        # Every replica counts the same database: one value, whichever replica reports it.
        return f"max(sessionkeeper_{name}{{{INSTANCE}}})"

    def rows(job: str, window: str) -> str:
        return (
            f'sum(increase(sessionkeeper_job_rows_total{{{INSTANCE}, job_name="{job}"}}[{window}]))'
        )

    return dashboard(
        "sessionkeeper-store",
        "sessionkeeper / store and database",
        "The daemon's database pool, the size of the session store, the bots' store calls "
        "(store.metrics), and usage rollups.",
        [
            row("Database and connection pool"),
            panel(
                "Database reachable",
                "1 when the replica's last database check succeeded.",
                [target(f"min by (instance) (sessionkeeper_database_up{{{INSTANCE}}})", "")],
                kind="stat",
                width=6,
            ),
            panel(
                "Pool connections",
                "Connections of each replica's pool: in use, idle, and the maximum "
                "(alert: SessionkeeperPoolExhausted).",
                [
                    target(f"{pool('size')} - {pool('available')}", "{{instance}} in use"),
                    target(pool("available"), "{{instance}} idle"),
                    target(pool("max"), "{{instance}} max"),
                ],
                width=9,
            ),
            panel(
                "Waiting for a connection",
                "Requests queued for a connection, and requests that got none (per second).",
                [
                    target(pool("requests_waiting"), "{{instance}} waiting"),
                    target(
                        f"rate({pool('requests_errors_total')}[$__rate_interval])",
                        "{{instance}} failed requests/s",
                    ),
                    target(
                        f"rate({pool('connections_lost_total')}[$__rate_interval])",
                        "{{instance}} lost connections/s",
                    ),
                ],
                width=9,
            ),
            row("Sessions and messages"),
            panel(
                "Sessions",
                "Sessions online and in the archive.",
                [
                    target(domain("sessions_active"), "online"),
                    target(domain("sessions_archived"), "archived"),
                ],
            ),
            panel(
                "Sessions archived or purged per hour",
                "Rows the session_archival job handled (sessions archived, archives purged).",
                [target(rows("session_archival", "1h"), "sessions")],
            ),
            panel(
                "Archival backlog",
                "Online sessions idle longer than session_archival's idle_seconds: they wait "
                "for its next run, which archives them all.",
                [target(domain("sessions_archivable"), "sessions")],
            ),
            panel(
                "Archival backlog age",
                "How long the oldest waiting session has been archivable, and three of "
                "session_archival's intervals, past which SessionkeeperArchivalFallingBehind "
                "fires. Healthy: a sawtooth up to one interval.",
                [
                    target(domain("sessions_archivable_age_seconds"), "oldest waiting"),
                    target(
                        "3 * max(sessionkeeper_job_interval_seconds"
                        f'{{{INSTANCE}, job_name="session_archival"}})',
                        "alert threshold",
                    ),
                ],
                unit="s",
            ),
            panel(
                "Messages",
                "Messages online and archived (PostgreSQL's row estimates, cheap on large "
                "tables; exact after ANALYZE).",
                [
                    sql_target(
                        "SELECT relname AS table, greatest(reltuples, 0)::bigint AS messages\n"
                        "FROM pg_class\n"
                        "WHERE oid IN ('session_messages'::regclass,"
                        " 'archived_session_messages'::regclass)\n"
                        "ORDER BY relname",
                        fmt="table",
                    )
                ],
                kind="bargauge",
                width=8,
            ),
            panel(
                "Proactive users",
                "Users in the published proactive-user list.",
                [target(domain("proactive_users"), "users")],
                kind="stat",
                width=8,
            ),
            panel(
                "Rate-limit windows",
                "Rows in rate_limits (ended windows are removed by rate_limit_cleanup).",
                [target(domain("rate_limit_rows"), "rows")],
                kind="stat",
                width=8,
            ),
            *bots_row(),
            row("Usage rollups"),
            panel(
                "Tokens per day by channel",
                "Input and output tokens per channel, from the usage_daily rollups.",
                [
                    sql_target(
                        "SELECT day::timestamptz AS time, channel AS metric,\n"
                        "       sum(input_tokens + output_tokens) AS tokens\n"
                        "FROM usage_daily\n"
                        "WHERE day BETWEEN $__timeFrom()::date AND $__timeTo()::date\n"
                        "GROUP BY 1, 2\n"
                        "ORDER BY 1, 2"
                    )
                ],
                stack=True,
            ),
            panel(
                "Requests per day by channel",
                "Requests per channel, from the usage_daily rollups.",
                [
                    sql_target(
                        "SELECT day::timestamptz AS time, channel AS metric,\n"
                        "       sum(requests) AS requests\n"
                        "FROM usage_daily\n"
                        "WHERE day BETWEEN $__timeFrom()::date AND $__timeTo()::date\n"
                        "GROUP BY 1, 2\n"
                        "ORDER BY 1, 2"
                    )
                ],
                stack=True,
            ),
            panel(
                "Usage rows rolled up",
                "Raw usage rows the usage_rollup job added to the daily rollups (per hour).",
                [target(rows("usage_rollup", "1h"), "rows")],
                width=24,
            ),
        ],
        variables=[
            variable(
                "bot",
                "Bot",
                f"label_values({BOT_CALLS}_count, instance)",
            )
        ],
    )


def bots_row() -> list[Panel]:
    """The bots' side of the store, from store.metrics: what users wait for."""
    buckets = f'{BOT_CALLS}_bucket{{{BOT}, operation=~"begin_turn|finish_turn"}}'

    def pool(name: str) -> str:
        return f"sum by (instance) (sessionkeeper_store_pool_{name}{{{BOT}}})"

    return [
        row("Bots"),
        panel(
            "begin_turn and finish_turn, p50 and p99",
            "Duration of the two calls of every message as the bots see them, pool wait "
            "included (alert: SessionkeeperBotBeginTurnSlow, p99 of begin_turn over 0.5 s).",
            [
                target(
                    f"histogram_quantile(0.99, sum by (operation, le) "
                    f"(rate({buckets}[$__rate_interval])))",
                    "{{operation}} p99",
                ),
                target(
                    f"histogram_quantile(0.5, sum by (operation, le) "
                    f"(rate({buckets}[$__rate_interval])))",
                    "{{operation}} p50",
                ),
            ],
            unit="s",
        ),
        panel(
            "Store calls per second",
            "Calls of the bots to the store, by operation.",
            [
                target(
                    f"sum by (operation) (rate({BOT_CALLS}_count{{{BOT}}}[$__rate_interval]))",
                    "{{operation}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        panel(
            "Errors per second",
            "Store calls that raised, by operation and error: InvalidInput is the bot's input, "
            "DatabaseUnavailable the database or the pool.",
            [
                target(
                    "sum by (operation, error) (rate(sessionkeeper_store_errors_total"
                    f"{{{BOT}}}[$__rate_interval]))",
                    "{{operation}} {{error}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        panel(
            "Turns refused by the rate limit",
            "begin_turn calls refused per second, by the window (seconds) that refused them; "
            "of those, the ones dropped quietly by channel (a window's first refusal is "
            "answered, the rest are not).",
            [
                target(
                    "sum by (window_seconds) (rate(sessionkeeper_store_turns_refused_total"
                    f"{{{BOT}}}[$__rate_interval]))",
                    "{{window_seconds}} s window",
                ),
                target(
                    "sum by (channel) (rate(sessionkeeper_store_refusals_dropped_total"
                    f"{{{BOT}}}[$__rate_interval]))",
                    "{{channel}} dropped quietly",
                ),
            ],
            unit="ops",
            width=8,
        ),
        panel(
            "Bot pool connections",
            "Each bot's store pool: connections in use and the maximum, calls waiting for one.",
            [
                target(f"{pool('size')} - {pool('available')}", "{{instance}} in use"),
                target(pool("max"), "{{instance}} max"),
                target(pool("requests_waiting"), "{{instance}} waiting"),
            ],
            width=8,
        ),
    ]


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {
        "sessionkeeper-jobs.json": jobs_dashboard(),
        "sessionkeeper-store.json": store_dashboard(),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def differences(out_dir: Path = OUT_DIR) -> Iterator[str]:
    """Names of committed dashboard files that differ from the generator's output."""
    expected = dashboards()
    for name, board in expected.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != render(board):
            yield name
    for path in sorted(out_dir.glob("*.json")):
        if path.name not in expected:
            yield path.name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = list(differences())
        for name in stale:
            print(f"{OUT_DIR / name} is out of date: run python {__file__}", file=sys.stderr)
        return 1 if stale else 0
    OUT_DIR.mkdir(exist_ok=True)
    for name, board in dashboards().items():
        (OUT_DIR / name).write_text(render(board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
