"""Jobs at scale: every maintenance job on a large backlog while bots keep talking.

The backlog (``Scale``, divided by each of ``--backlogs``): expired rate-limit windows, idle
sessions with their messages, raw usage rows, expired link codes and failure records, users
inactive for over a year, and LangGraph threads holding more checkpoints than the retention
keeps, in daily time partitions (made with partition_maintenance before seeding). Each job then
runs once as the daemon runs it (its registry entry, default settings, an autocommit
connection, the daemon's yield to the bots: a ``Pacer`` with its own probe connection), while a
paced online load (``rate`` turns per second of this store's ``begin_turn`` + ``finish_turn``)
runs beside it.

Windows: the online p99 over a fixed window (``window`` seconds from the job's start, or the
job's whole run if longer) is compared with the p99 over the idle window of the same length
just before it. Reported per job besides: rows per second; the longest time an online
statement waited on a lock the job's backend held (sampled every few milliseconds with
``pg_blocking_pids``); the pacer's yields; and the turn-by-turn timeline the plots draw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from sessionkeeper.daemon.pacing import PaceState, YieldSettings, paced
from sessionkeeper.jobs.base import STORE_DEFAULTS, uninterrupted
from sessionkeeper.jobs.registry import JOBS as REGISTRY

from .harness import ServerDelta, WalMeter, median, percentile

# Every job, in the order they run on one backlog: user_retention after session_archival (the
# sessions it would have to look at are archived by then), each on what the others left.
JOBS = (
    "partition_maintenance",
    "rate_limit_cleanup",
    "link_code_expiry",
    "session_archival",
    "proactive_reload",
    "usage_rollup",
    "user_retention",
    "checkpoint_retention",
)


@dataclass(frozen=True)
class Scale:
    rate_limit_windows: int = 1_000_000
    idle_sessions: int = 100_000
    messages_per_session: int = 4
    usage_rows: int = 1_000_000
    users: int = 10_000
    link_codes: int = 100_000
    inactive_users: int = 10_000
    checkpoint_threads: int = 2_000
    # Per thread: 10 more than checkpoint_retention keeps (keep_latest 20), each with a value.
    checkpoints_per_thread: int = 30

    def divided(self, by: float) -> Scale:
        """The backlog divided by ``by`` (0.1: ten times today's)."""
        return Scale(
            int(self.rate_limit_windows / by),
            int(self.idle_sessions / by),
            self.messages_per_session,
            int(self.usage_rows / by),
            max(100, int(self.users / by)),
            int(self.link_codes / by),
            max(10, int(self.inactive_users / by)),
            max(10, int(self.checkpoint_threads / by)),
            self.checkpoints_per_thread,
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


# Expired link codes (two days past their expiry), and a failure record per user whose window
# ended two days ago: both past link_code_expiry's retention.
SEED_LINK_CODES = """
WITH owners AS (
    SELECT user_id, row_number() OVER (ORDER BY user_id) AS n
    FROM users WHERE channel_user_id LIKE 'job%%'
)
INSERT INTO link_codes (code, user_id, created_at, expires_at)
SELECT 'bench-' || g, o.user_id, now() - interval '2 days', now() - interval '2 days'
FROM generate_series(1, %(codes)s) AS g
JOIN owners o ON o.n = 1 + g %% %(users)s
"""

SEED_LINK_FAILURES = """
INSERT INTO link_code_failures (user_id, window_start, failures)
SELECT user_id, now() - interval '2 days', 3 FROM users WHERE channel_user_id LIKE 'job%%'
"""

# Users not seen for 400 days (user_retention forgets after 365), with no session.
SEED_INACTIVE_USERS = """
INSERT INTO users (channel, channel_user_id, authenticated, created_at, updated_at)
SELECT 'telegram', 'gone' || g, false, now() - interval '400 days', now() - interval '400 days'
FROM generate_series(1, %(inactive)s) AS g
"""

# LangGraph threads of the job users, each with ``per_thread`` checkpoints in one namespace,
# every checkpoint referencing a value of its own (as a graph whose state changes every step).
SEED_THREADS = """
WITH owners AS (
    SELECT user_id, row_number() OVER (ORDER BY user_id) AS n
    FROM users WHERE channel_user_id LIKE 'job%%'
)
INSERT INTO langgraph_threads (thread_id, user_id)
SELECT 'thread-' || lpad(g::text, 7, '0'), o.user_id
FROM generate_series(1, %(threads)s) AS g
JOIN owners o ON o.n = 1 + g %% %(users)s
"""

SEED_CHECKPOINTS = """
INSERT INTO langgraph_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
                                   parent_checkpoint_id, type, checkpoint, versions, metadata)
SELECT t.thread_id, '', lpad(k::text, 8, '0'),
       CASE WHEN k > 1 THEN lpad((k - 1)::text, 8, '0') END,
       'msgpack', convert_to(repeat(md5(t.thread_id || k), 4), 'UTF8'),
       jsonb_build_object('messages', lpad(k::text, 8, '0')), '{"step": 1}'::jsonb
FROM langgraph_threads t CROSS JOIN generate_series(1, %(per_thread)s) AS k
"""

SEED_BLOBS = """
INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, data)
SELECT thread_id, '', 'messages', checkpoint_id, 'msgpack', checkpoint
FROM langgraph_checkpoints
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
        ("link_codes", SEED_LINK_CODES, {"codes": scale.link_codes, "users": scale.users}),
        ("link_code_failures", SEED_LINK_FAILURES, {}),
        ("inactive_users", SEED_INACTIVE_USERS, {"inactive": scale.inactive_users}),
        (
            "langgraph_threads",
            SEED_THREADS,
            {"threads": scale.checkpoint_threads, "users": scale.users},
        ),
        (
            "langgraph_checkpoints",
            SEED_CHECKPOINTS,
            {"per_thread": scale.checkpoints_per_thread},
        ),
        ("langgraph_blobs", SEED_BLOBS, {}),
    ]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        partitions = REGISTRY["partition_maintenance"]
        # Daily partitions over the whole backlog (its oldest rows are 30 days old), as a
        # daemon running partition_maintenance would have made them.
        t0 = time.perf_counter()
        partitions.run(
            conn,
            partitions.settings(ahead=40),
            datetime.now(UTC) - timedelta(days=35),
            uninterrupted,
            STORE_DEFAULTS,
        )
        timings["partitions"] = round(time.perf_counter() - t0, 2)
        for name, statement, params in steps:
            t0 = time.perf_counter()
            conn.execute(statement, params or None)
            timings[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        timings["vacuum_checkpoint"] = round(time.perf_counter() - t0, 2)
    return timings


class PacedLoad:
    """``workers`` threads each running ``operation`` at a fixed pace until stopped.

    Every turn is recorded as (start, latency ms), its start on ``time.perf_counter``'s clock.
    """

    def __init__(self, operation: Callable[[int, int], object], workers: int, rate: float) -> None:
        self.operation = operation
        self.workers = workers
        self.interval = workers / rate
        self.turns: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for worker in range(self.workers):
            thread = threading.Thread(target=self._work, args=(worker,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def record(self) -> list[tuple[float, float]]:
        """Start a new recording; returns the list the turns are collected in."""
        fresh: list[tuple[float, float]] = []
        self.turns = fresh
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
                self.turns.append((t0, (time.perf_counter() - t0) * 1000))
                i += 1
                next_at += self.interval
        except BaseException as exc:
            self.errors.append(exc)


class LockWatch:
    """How long online statements waited on locks the job's backend held.

    A thread samples, every ``interval`` seconds, the backends waiting on a lock that
    ``pg_blocking_pids`` says the job's backend holds; one wait is one (backend, statement
    start) seen in consecutive samples. Its length is the time between its first and last
    sighting plus one interval (a wait can begin up to an interval before it is first seen):
    shorter waits than an interval may be missed, longer ones are measured to an interval.
    """

    WAITING = """
        SELECT pid, query_start FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND datname = current_database()
          AND %s = ANY(pg_blocking_pids(pid))
    """

    def __init__(self, conninfo: str, job_pid: int, interval: float = 0.005) -> None:
        self.conninfo = conninfo
        self.job_pid = job_pid
        self.interval = interval
        # (pid, statement start) -> first and last sighting (perf_counter).
        self.waits: dict[tuple[int, datetime], list[float]] = {}
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LockWatch:
        self._running.set()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join()

    def episodes(self) -> list[tuple[float, float]]:
        """Each wait as (first sighting, length ms)."""
        return [
            (first, (last - first + self.interval) * 1000) for first, last in self.waits.values()
        ]

    def _sample(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while self._running.is_set():
                now = time.perf_counter()
                for pid, started in conn.execute(self.WAITING, (self.job_pid,)):
                    self.waits.setdefault((pid, started), [now, now])[1] = now
                time.sleep(self.interval)


@dataclass
class JobRun:
    job: str
    rows: int
    seconds: float
    details: dict[str, Any]
    # Every online turn of the idle window and the job's window: (start, latency ms), the
    # start in seconds from the job's start (negative: the idle window).
    turns: list[tuple[float, float]]
    window: float
    server: ServerDelta
    idle_server: ServerDelta
    # The pacer's decisions that added a pause: (seconds from the job's start, extra pause).
    yields: list[tuple[float, float]] = field(default_factory=list)
    # Online statements' waits on the job's locks: (seconds from the job's start, ms).
    lock_waits: list[tuple[float, float]] = field(default_factory=list)
    # The pacer's signal at each batch boundary: (seconds from the job's start, signal ms,
    # limit ms), to tune the yield settings against what the turns felt.
    signals: list[tuple[float, float, float]] = field(default_factory=list)

    def latencies(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.turns if start <= t < end]

    def record(self) -> dict[str, Any]:
        idle_ms = self.latencies(-self.window, 0.0)
        online_ms = self.latencies(0.0, self.seconds)
        # The job's window: ``window`` seconds from its start, or its whole run if longer.
        span = max(self.window, self.seconds)
        window_ms = self.latencies(0.0, span)
        idle_p99 = percentile(idle_ms, 99)
        busy_p99 = percentile(online_ms, 99)
        window_p99 = percentile(window_ms, 99)
        moved = self.rows + int(self.details.get("messages", 0))
        yielded = sum(extra for _, extra in self.yields)
        return {
            "job": self.job,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows / self.seconds) if self.seconds else 0,
            # The rate without the pauses the pacer added (what the job does when unopposed).
            "rows_per_s_unyielded": (
                round(self.rows / (self.seconds - yielded)) if self.seconds > yielded else None
            ),
            # session_archival's rows are sessions; each also moves its messages.
            "rows_incl_messages": moved,
            "rows_incl_messages_per_s": round(moved / self.seconds) if self.seconds else 0,
            "details": self.details,
            # The windows (issue 24): the job's window against the idle one before it.
            "window_seconds": round(span, 2),
            "window_turns": len(window_ms),
            "window_idle_turns": len(idle_ms),
            "window_idle_p99_ms": round(idle_p99, 3),
            "window_p99_ms": round(window_p99, 3),
            "window_p99_ratio": round(window_p99 / idle_p99, 3) if idle_p99 else None,
            "lock_wait_max_ms": round(max((ms for _, ms in self.lock_waits), default=0.0), 1),
            "lock_waits": len(self.lock_waits),
            "yields": len(self.yields),
            "yielded_seconds": round(yielded, 2),
            "pacer_signal": [
                (round(t, 3), round(sig, 3), round(lim, 3)) for t, sig, lim in self.signals
            ],
            # Release 0.2's keys, same meaning: the idle window, and the job's run alone.
            "online_turns": len(online_ms),
            "idle_p50_ms": round(median(idle_ms), 3),
            "idle_p99_ms": round(idle_p99, 3),
            "job_p50_ms": round(median(online_ms), 3),
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
            **split("idle", idle_ms, self.idle_server),
            **split("job", online_ms, self.server),
            # What the plots draw (bench/plots.py), rounded to keep the records small.
            "timeline": [[round(t, 3), round(ms, 2)] for t, ms in self.turns],
            "yield_marks": [[round(t, 3), round(extra, 3)] for t, extra in self.yields],
            "lock_marks": [[round(t, 3), round(ms, 1)] for t, ms in self.lock_waits],
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


def run_jobs(
    conninfo: str,
    load: PacedLoad,
    window: float,
    server_pid: int | None = None,
    pause_seconds: float = 0.0,
    jobs: tuple[str, ...] = JOBS,
    overrides: dict[str, dict[str, Any]] | None = None,
    yielding: YieldSettings | None = None,
) -> list[JobRun]:
    """Each job once under ``load`` (already started), in windows of ``window`` seconds.

    Jobs run with their default settings, except ``pause_seconds`` (the pause between
    batches) when it is not 0 and the settings in ``overrides`` (per job), and yield to the
    bots as the daemon's default makes them (``yielding``: YieldSettings(); disabled: no
    pacer). The job's connection carries the daemon's application_name, so the wait samples
    tell its backend from the online ones. While a job runs (and over the idle window before
    it) its WAL, the server's CPU time and the sampled waits are recorded too.
    """
    yielding = yielding or YieldSettings()
    runs = []
    meter = WalMeter(conninfo, server_pid)
    with psycopg.connect(
        conninfo, autocommit=True, application_name=WalMeter.JOB_APPLICATION
    ) as conn:
        for name in jobs:
            spec = REGISTRY[name]
            turns = load.record()
            meter.begin()
            time.sleep(window)
            idle_server = meter.end()
            changed = dict((overrides or {}).get(name, {}))
            if pause_seconds:
                changed["pause_seconds"] = pause_seconds
            settings = spec.settings(**changed)
            yields: list[tuple[float, float]] = []
            signals: list[tuple[float, float, float]] = []
            meter.begin()
            t0 = time.perf_counter()

            def seen(
                state: PaceState,
                extra: float,
                t0: float = t0,
                yields: list[tuple[float, float]] = yields,
                signals: list[tuple[float, float, float]] = signals,
            ) -> None:
                at = time.perf_counter() - t0
                signals.append((at, 1000 * state.signal_seconds, 1000 * state.limit_seconds))
                if extra > 0:
                    yields.append((at, extra))

            with (
                paced(name, yielding, conninfo, uninterrupted, seen) as paced_run,
                LockWatch(conninfo, conn.info.backend_pid) as locks,
            ):
                paced_run.begin()
                result = spec.run(
                    conn, settings, datetime.now(UTC), paced_run.pause, STORE_DEFAULTS
                )
                seconds = time.perf_counter() - t0
                server = meter.end()
            # The rest of the job's window: what the bots feel right after it.
            time.sleep(max(0.0, t0 + window - time.perf_counter()))
            load.record()
            runs.append(
                JobRun(
                    name,
                    result.rows,
                    seconds,
                    result.details,
                    [(t - t0, ms) for t, ms in turns],
                    window,
                    server,
                    idle_server,
                    yields,
                    [(t - t0, ms) for t, ms in locks.episodes()],
                    signals,
                )
            )
    meter.close()
    return runs
