"""Jobs at scale: the maintenance jobs on large backlogs while bots keep talking.

The backlog (``Scale``; ``--quick`` divides it): expired rate-limit windows, idle sessions with
their messages, raw usage rows, spread over a few thousand users, in daily time partitions
(made with partition_maintenance before seeding, when the release has it). Each job then runs
once, as the daemon would call it (``jobs.<name>.run(conn, Settings(), now)`` on an autocommit
connection, default batch sizes), while a paced online load (``rate`` turns per second of this
store's ``begin_turn`` + ``finish_turn``) runs beside it. Reported per job: rows per second, and
the online p50/p99 while the job ran against the same load with no job running.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .harness import ServerDelta, WalMeter, median, percentile

JOBS = ("partition_maintenance", "rate_limit_cleanup", "session_archival", "usage_rollup")


@dataclass(frozen=True)
class Scale:
    rate_limit_windows: int = 1_000_000
    idle_sessions: int = 100_000
    messages_per_session: int = 4
    usage_rows: int = 1_000_000
    users: int = 10_000

    def divided(self, by: float) -> Scale:
        """The backlog divided by ``by`` (0.1: ten times today's)."""
        return Scale(
            int(self.rate_limit_windows / by),
            int(self.idle_sessions / by),
            self.messages_per_session,
            int(self.usage_rows / by),
            max(100, int(self.users / by)),
        )


# Seeding statements, on the store's schema (store/schema.py). Everything is old enough for
# every job's default settings: windows ended two days ago, sessions idle for 60 days.
SEED_USERS = """
INSERT INTO users (channel, channel_user_id, authenticated)
SELECT 'telegram', 'job' || g, true FROM generate_series(1, %(users)s) AS g
"""

SEED_RATE_LIMITS = """
INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)
SELECT u.user_id, 60,
       date_trunc('minute', now() - interval '2 days') - k * interval '1 minute', 1
FROM (SELECT user_id FROM users WHERE channel_user_id LIKE 'job%%') AS u
CROSS JOIN generate_series(0, %(per_user)s - 1) AS k
"""

SEED_SESSIONS = """
WITH owners AS (
    SELECT user_id, row_number() OVER (ORDER BY user_id) AS n
    FROM users WHERE channel_user_id LIKE 'job%%'
), created AS (
    INSERT INTO sessions (user_id, created_at, last_active, next_seq)
    SELECT o.user_id, now() - interval '61 days', now() - interval '60 days', %(messages)s
    FROM generate_series(1, %(sessions)s) AS g
    JOIN owners o ON o.n = 1 + g %% %(users)s
    RETURNING session_id, user_id
)
INSERT INTO session_messages (user_id, session_id, seq, role, content, created_at)
SELECT c.user_id, c.session_id, k,
       CASE WHEN k %% 2 = 0 THEN 'user' ELSE 'assistant' END,
       repeat(md5(c.session_id::text || k), 6),
       now() - interval '60 days'
FROM created c CROSS JOIN generate_series(0, %(messages)s - 1) AS k
"""

SEED_USAGE = """
WITH owners AS (
    SELECT user_id, row_number() OVER (ORDER BY user_id) AS n
    FROM users WHERE channel_user_id LIKE 'job%%'
)
INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, cached_tokens,
                         created_at)
SELECT o.user_id, 'telegram', 1200, 300, 800,
       now() - interval '30 days' + (g %% 2592000) * interval '1 second'
FROM generate_series(1, %(rows)s) AS g
JOIN owners o ON o.n = 1 + g %% %(users)s
"""


def seed(conninfo: str, scale: Scale) -> dict[str, float]:
    """Fill the backlog; returns seconds spent per table."""
    timings: dict[str, float] = {}
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("users", SEED_USERS, {"users": scale.users}),
        (
            "rate_limits",
            SEED_RATE_LIMITS,
            {"per_user": max(1, scale.rate_limit_windows // scale.users)},
        ),
        (
            "sessions",
            SEED_SESSIONS,
            {
                "sessions": scale.idle_sessions,
                "messages": scale.messages_per_session,
                "users": scale.users,
            },
        ),
        ("usage_stats", SEED_USAGE, {"rows": scale.usage_rows, "users": scale.users}),
    ]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        partitions = job_module("partition_maintenance")
        if partitions is not None:
            # Daily partitions over the whole backlog (its oldest rows are 30 days old), as a
            # daemon running partition_maintenance would have made them.
            t0 = time.perf_counter()
            settings = partitions.Settings(ahead=40)
            partitions.run(conn, settings, datetime.now(UTC) - timedelta(days=35))
            timings["partitions"] = round(time.perf_counter() - t0, 2)
        for name, statement, params in steps:
            t0 = time.perf_counter()
            conn.execute(statement, params)
            timings[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        timings["vacuum_checkpoint"] = round(time.perf_counter() - t0, 2)
    return timings


class PacedLoad:
    """``workers`` threads each running ``operation`` at a fixed pace until stopped."""

    def __init__(self, operation: Callable[[int, int], object], workers: int, rate: float) -> None:
        self.operation = operation
        self.workers = workers
        self.interval = workers / rate
        self.latencies: list[list[float]] = [[] for _ in range(workers)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for worker in range(self.workers):
            thread = threading.Thread(target=self._work, args=(worker,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def record(self) -> list[float]:
        """Start a new recording; returns the list the latencies (ms) are collected in."""
        fresh: list[float] = []
        self.latencies = [fresh for _ in range(self.workers)]
        return fresh

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self.errors:
            raise self.errors[0]

    def _work(self, worker: int) -> None:
        next_at = time.perf_counter() + self.interval * worker / self.workers
        i = 0
        try:
            while not self._stop.is_set():
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                self.operation(worker, i)
                self.latencies[worker].append((time.perf_counter() - t0) * 1000)
                i += 1
                next_at += self.interval
        except BaseException as exc:
            self.errors.append(exc)


@dataclass
class JobRun:
    job: str
    rows: int
    seconds: float
    details: dict[str, Any]
    online_ms: list[float]
    idle_ms: list[float]
    server: ServerDelta
    idle_server: ServerDelta

    def record(self) -> dict[str, Any]:
        idle_p99 = percentile(self.idle_ms, 99)
        busy_p99 = percentile(self.online_ms, 99)
        moved = self.rows + int(self.details.get("messages", 0))
        return {
            "job": self.job,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows / self.seconds) if self.seconds else 0,
            # session_archival's rows are sessions; each also moves its messages.
            "rows_incl_messages": moved,
            "rows_incl_messages_per_s": round(moved / self.seconds) if self.seconds else 0,
            "details": self.details,
            "online_turns": len(self.online_ms),
            "idle_p50_ms": round(median(self.idle_ms), 3),
            "idle_p99_ms": round(idle_p99, 3),
            "job_p50_ms": round(median(self.online_ms), 3),
            "job_p99_ms": round(busy_p99, 3),
            "p99_ratio": round(busy_p99 / idle_p99, 2) if idle_p99 else None,
            "wal_bytes_per_row": round(self.server.wal_bytes / self.rows) if self.rows else None,
            "server_cpu_s": (
                round(self.server.cpu_seconds, 2) if self.server.cpu_seconds is not None else None
            ),
            "waits": self.server.waits,
            # Where the online turns' time went, idle and while the job ran: the online
            # backends' waits alone (mean active backends per wait event), the job's backend
            # alone, the machine's CPU pressure, and the turn split into server time (Little's
            # law: active online backends / turns per second) and the rest (client, network,
            # waiting for a CPU to run the client on).
            "waits_online_idle": self.idle_server.waits_by_role.get("online", {}),
            "waits_online": self.server.waits_by_role.get("online", {}),
            "waits_job": self.server.waits_by_role.get("job", {}),
            "cpu_pressure_idle": self.idle_server.cpu_pressure,
            "cpu_pressure": self.server.cpu_pressure,
            # Candidates for what differs between a short and a long run of a job: checkpoints
            # during it, and autovacuum workers on this database (mean active, sampled).
            "checkpoints": self.server.checkpoints,
            "autovacuum_active": self.server.active("autovacuum"),
            **split("idle", self.idle_ms, self.idle_server),
            **split("job", self.online_ms, self.server),
        }


def split(label: str, latencies_ms: list[float], server: ServerDelta) -> dict[str, float | None]:
    """A turn's mean time, and how much of it the server spent (Little's law)."""
    if not latencies_ms or not server.seconds:
        return {f"{label}_mean_ms": None, f"{label}_server_ms": None}
    turns_per_s = len(latencies_ms) / server.seconds
    return {
        f"{label}_mean_ms": round(sum(latencies_ms) / len(latencies_ms), 3),
        f"{label}_server_ms": round(server.active("online") / turns_per_s * 1000, 3),
    }


def job_module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"jobs.{name}")
    except ImportError:
        return None


def run_jobs(
    conninfo: str,
    load: PacedLoad,
    idle_seconds: float,
    server_pid: int | None = None,
    pause_seconds: float = 0.0,
    jobs: tuple[str, ...] = JOBS,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> list[JobRun]:
    """Each job once under ``load`` (already started); idle p99 measured before each job.

    Jobs run with their default settings, except ``pause_seconds`` (the pause between
    batches) when it is not 0 and the settings in ``overrides`` (per job). The job's
    connection carries the daemon's application_name, so the wait samples tell its backend
    from the online ones. While a job runs (and over the idle window before it) its WAL, the
    server's CPU time and the sampled waits are recorded too.
    """
    runs = []
    meter = WalMeter(conninfo, server_pid)
    with psycopg.connect(
        conninfo, autocommit=True, application_name=WalMeter.JOB_APPLICATION
    ) as conn:
        for name in jobs:
            module = job_module(name)
            if module is None:
                continue
            idle = load.record()
            meter.begin()
            time.sleep(idle_seconds)
            idle_server = meter.end()
            busy = load.record()
            meter.begin()
            t0 = time.perf_counter()
            changed = dict((overrides or {}).get(name, {}))
            if pause_seconds:
                changed["pause_seconds"] = pause_seconds
            settings = module.Settings(**changed)
            result = module.run(conn, settings, datetime.now(UTC))
            seconds = time.perf_counter() - t0
            server = meter.end()
            load.record()
            runs.append(
                JobRun(name, result.rows, seconds, result.details, busy, idle, server, idle_server)
            )
    meter.close()
    return runs
