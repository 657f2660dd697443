"""The daemon as a real process on a real PostgreSQL: metrics over HTTP, replicas, faults."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from daemon_support import daemon_env, every_job
from prometheus_client.parser import text_string_to_metric_families
from tool_support import unavailable

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.jobs import JOB_NAMES

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

REQUIRED = (
    "sessionkeeper_job_runs_total",
    "sessionkeeper_job_duration_seconds_count",
    "sessionkeeper_job_duration_seconds_bucket",
    "sessionkeeper_job_last_success_timestamp_seconds",
    "sessionkeeper_job_rows_total",
)
# Never within a test run (a schedule is needed; this one fires once a year).
NEVER = "0 0 1 1 *"


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll ``check`` until it returns something truthy (bounded; not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Daemon:
    """``sessionkeeper --log-format json run`` with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sessionkeeper", "--log-format", "json", "run"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
        )
        line = self.wait_for_log(lambda r: r["message"].startswith("metrics on "), "metrics")
        self.base_url = line["message"].split()[2].removesuffix("/metrics")

    def records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append({"message": line})
        return records

    def wait_for_log(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log_path.read_text()}")
            return next((r for r in self.records() if match(r)), None)

        return wait_for(check, what)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(database_url: str, replica: str = "a", **settings: str) -> Daemon:
        env = daemon_env(database_url, SESSIONKEEPER_REPLICA_ID=replica, **settings)
        daemon = Daemon(env, tmp_path / f"{replica}.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def promtool_check(body: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_exist_for_every_job_at_start_up(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(database_url, **every_job(NEVER))
    samples = daemon.samples()
    for job in JOB_NAMES:
        for outcome in ("success", "failure", "skipped"):
            key = ("sessionkeeper_job_runs_total", (("job", job), ("outcome", outcome)))
            assert samples[key] == 0
        for name in REQUIRED[1:]:
            matching = [v for (n, ls), v in samples.items() if n == name and ("job", job) in ls]
            assert matching and all(v == 0 for v in matching), (name, job)
    for name in (
        "sessionkeeper_db_pool_size",
        "sessionkeeper_sessions_active",
        "sessionkeeper_sessions_archived",
        "sessionkeeper_proactive_users",
        "sessionkeeper_rate_limit_rows",
        "sessionkeeper_sessions_archivable",
        "sessionkeeper_sessions_archivable_age_seconds",
        "sessionkeeper_database_up",
        "process_start_time_seconds",
    ):
        assert (name, ()) in samples, name
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.get("/readyz") == (200, "ready\n")
    promtool_check(daemon.get("/metrics")[1])
    assert daemon.stop() == 0


def test_schedules_backlog_and_process_start_are_exported(
    database_url: str, conn: Conn, start_daemon: Callable[..., Daemon]
) -> None:
    idle_sessions(conn, 3)  # idle for 40 days: archivable for 10
    started = time.time()
    settings = {
        **every_job(NEVER),
        "SESSIONKEEPER_RATE_LIMIT_CLEANUP_SCHEDULE": "90s",
        # Weekdays at 09:00: a daily job, also when the next gap is a weekend.
        "SESSIONKEEPER_LINK_CODE_EXPIRY_SCHEDULE": "0 9 * * 1-5",
        "SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE": "*/15 * * * *",
        "SESSIONKEEPER_USAGE_ROLLUP_ENABLED": "false",
    }
    daemon = start_daemon(database_url, **settings)
    intervals = {
        job: daemon.value("sessionkeeper_job_interval_seconds", job=job) for job in JOB_NAMES
    }
    assert intervals == {
        "partition_maintenance": 365 * 86400,
        "rate_limit_cleanup": 90,
        "link_code_expiry": 86400,
        "session_archival": 365 * 86400,  # NEVER: once a year
        "proactive_reload": 365 * 86400,
        "usage_rollup": 900,  # disabled, still its configured schedule
        "user_retention": 365 * 86400,
        "checkpoint_retention": 365 * 86400,
    }

    archivable = wait_for(
        lambda: daemon.value("sessionkeeper_sessions_archivable"), "the backlog gauge"
    )
    assert archivable == 3
    age = daemon.value("sessionkeeper_sessions_archivable_age_seconds")
    assert age is not None and 10 * 86400 <= age < 10 * 86400 + 120
    assert daemon.value("sessionkeeper_sessions_active") == 3

    start_time = daemon.value("process_start_time_seconds")
    assert start_time is not None and started - 1 <= start_time <= time.time()
    assert daemon.stop() == 0


def test_jobs_run_on_schedule_and_are_counted(
    database_url: str, conn: Conn, start_daemon: Callable[..., Daemon]
) -> None:
    conn.execute(
        """
        WITH u AS (
            INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '1')
            RETURNING user_id
        )
        INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)
        SELECT user_id, 60, now() - interval '3 days', 3 FROM u
        """
    )
    # (Days before any partition partition_maintenance makes: the DEFAULT partition's row is
    # deleted by row; windows in a partition go when the whole partition has ended.)
    daemon = start_daemon(database_url, **every_job("1"))

    def all_succeeded() -> bool:
        return all(
            (daemon.value("sessionkeeper_job_runs_total", job=job, outcome="success") or 0) >= 1
            for job in JOB_NAMES
        )

    wait_for(all_succeeded, "a successful run of every job")
    assert daemon.value("sessionkeeper_job_rows_total", job="rate_limit_cleanup") == 1
    for job in JOB_NAMES:
        assert (daemon.value("sessionkeeper_job_last_success_timestamp_seconds", job=job) or 0) > 0
        assert (daemon.value("sessionkeeper_job_duration_seconds_count", job=job) or 0) >= 1
    promtool_check(daemon.get("/metrics")[1])

    # One structured log line per run, and one ledger row per run.
    runs = [r for r in daemon.records() if r.get("outcome") == "success"]
    assert {r["job"] for r in runs} == set(JOB_NAMES)
    assert all({"rows", "duration_seconds"} <= r.keys() for r in runs)
    assert daemon.stop() == 0
    ledger = conn.execute(
        "SELECT job, outcome, rows, replica_id FROM job_runs WHERE outcome = 'success'"
    ).fetchall()
    assert {row[0] for row in ledger} == set(JOB_NAMES)
    assert ("rate_limit_cleanup", "success", 1, "a") in ledger


def ledger_slots(conn: Conn) -> dict[tuple[str, str], list[tuple[str, str]]]:
    slots: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for job, slot, replica, outcome in conn.execute(
        "SELECT job, details ->> 'slot', replica_id, outcome FROM job_runs ORDER BY run_id"
    ):
        slots.setdefault((job, slot), []).append((replica, outcome))
    return slots


def test_two_replicas_run_each_job_once_per_slot(
    database_url: str, conn: Conn, start_daemon: Callable[..., Daemon]
) -> None:
    first = start_daemon(database_url, "a", **every_job("1"))
    second = start_daemon(database_url, "b", **every_job("1"))

    def slots_shared_by_both() -> set[tuple[str, str]] | None:
        shared = {
            key
            for key, runs in ledger_slots(conn).items()
            if {replica for replica, _ in runs} == {"a", "b"}
        }
        per_job = {job for job, _ in shared}
        return shared if per_job == set(JOB_NAMES) and len(shared) >= 3 * len(JOB_NAMES) else None

    wait_for(slots_shared_by_both, "three slots of every job seen by both replicas")
    assert first.stop() == 0 and second.stop() == 0
    for (job, slot), runs in ledger_slots(conn).items():
        outcomes = sorted(outcome for _, outcome in runs)
        assert outcomes.count("success") == 1, (job, slot, runs)
        assert set(outcomes) <= {"success", "skipped"}, (job, slot, runs)


def blocked_on_lock(conn: Conn, job: str) -> bool:
    """The daemon's run of ``job`` is in the ledger and its batch waits for a table lock."""
    running = conn.execute(
        "SELECT count(*) FROM job_runs WHERE job = %s AND outcome = 'running'", (job,)
    ).fetchone()
    waiting = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sessionkeeper-daemon'"
        " AND wait_event_type = 'Lock' AND query LIKE 'WITH b AS%%archived_sessions%%'"
    ).fetchone()
    return bool(running and running[0] and waiting and waiting[0])


def idle_sessions(conn: Conn, count: int) -> None:
    conn.execute(
        """
        WITH u AS (
            INSERT INTO users (channel, channel_user_id) VALUES ('telegram', 'idle')
            RETURNING user_id
        ), s AS (
            INSERT INTO sessions (user_id, created_at, last_active, next_seq)
            SELECT user_id, now() - interval '41 days', now() - interval '40 days', 1
            FROM u, generate_series(1, %s)
            RETURNING session_id
        )
        INSERT INTO session_messages (session_id, seq, role, content)
        SELECT session_id, 0, 'user', 'hello' FROM s
        """,
        (count,),
    )


ARCHIVAL_ONLY = {
    **every_job(NEVER),
    "SESSIONKEEPER_SESSION_ARCHIVAL_SCHEDULE": "1",
    "SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE": "1",
    # Wait for the test's table lock as long as it is held.
    "SESSIONKEEPER_LOCK_TIMEOUT_SECONDS": "0",
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_stops_the_daemon_after_the_current_batch(
    database_url: str, conn: Conn, start_daemon: Callable[..., Daemon], signum: int
) -> None:
    idle_sessions(conn, 3)
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE archived_sessions IN ACCESS EXCLUSIVE MODE")
        daemon = start_daemon(database_url, **ARCHIVAL_ONLY)
        wait_for(lambda: blocked_on_lock(conn, "session_archival"), "a run waiting in a batch")
        daemon.process.send_signal(signum)
        daemon.wait_for_log(lambda r: r["message"] == "sessionkeeper stopping", "stopping")
        # The batch in progress holds the daemon until it is done.
        assert daemon.process.poll() is None
        blocker.commit()
    assert daemon.stop(signum) == 0
    run = conn.execute(
        "SELECT outcome, rows, details ->> 'stopped' FROM job_runs WHERE job = 'session_archival'"
    ).fetchall()
    assert run == [("success", 1, "true")]
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM archived_session_messages").fetchone() == (1,)


def test_a_signal_ends_a_pause_between_batches_at_once(
    database_url: str, conn: Conn, start_daemon: Callable[..., Daemon]
) -> None:
    idle_sessions(conn, 3)
    pausing = {**ARCHIVAL_ONLY, "SESSIONKEEPER_SESSION_ARCHIVAL_PAUSE_SECONDS": "3600"}
    daemon = start_daemon(database_url, **pausing)
    # The first batch moved one session; the run then waits an hour before the next one.
    archived = "SELECT count(*) FROM archived_sessions"
    wait_for(lambda: conn.execute(archived).fetchone() == (1,), "the first batch")
    # Daemon.stop allows a minute for the exit: the pause must not be waited out.
    assert daemon.stop() == 0
    run = conn.execute(
        "SELECT outcome, rows, details ->> 'stopped' FROM job_runs WHERE job = 'session_archival'"
    ).fetchall()
    assert run == [("success", 1, "true")]
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (2,)


@pytest.mark.slow
def test_the_daemon_survives_a_database_restart_during_a_run(
    embedded_server_factory: type[EmbeddedPostgres],
    start_daemon: Callable[..., Daemon],
) -> None:
    server = embedded_server_factory()
    server.start()
    url = server.url("postgres")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as arrange:
        idle_sessions(arrange, 1)
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE archived_sessions IN ACCESS EXCLUSIVE MODE")
    daemon = start_daemon(url, **ARCHIVAL_ONLY)
    with psycopg.connect(url, autocommit=True) as watch:
        wait_for(lambda: blocked_on_lock(watch, "session_archival"), "a run waiting in a batch")

    server.stop(force=True)
    blocker.close()
    wait_for(lambda: daemon.get("/readyz")[0] == 503, "/readyz to turn unready")
    failures = {"job": "session_archival", "outcome": "failure"}
    wait_for(
        lambda: (daemon.value("sessionkeeper_job_runs_total", **failures) or 0) >= 1,
        "the failed run in the metrics",
    )
    assert daemon.value("sessionkeeper_database_up") == 0
    assert daemon.process.poll() is None

    server.start()
    wait_for(lambda: daemon.get("/readyz")[0] == 200, "/readyz to turn ready again")
    with psycopg.connect(url, autocommit=True) as check:

        def succeeded() -> bool:
            row = check.execute(
                "SELECT count(*) FROM job_runs WHERE job = 'session_archival'"
                " AND outcome = 'success' AND rows = 1"
            ).fetchone()
            return bool(row and row[0])

        wait_for(succeeded, "a successful run after the restart")
        first = check.execute(
            "SELECT outcome, error FROM job_runs WHERE job = 'session_archival'"
            " ORDER BY run_id LIMIT 1"
        ).fetchone()
        assert first is not None and first[0] == "failure" and first[1]
        assert check.execute("SELECT count(*) FROM archived_session_messages").fetchone() == (1,)
        assert check.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    assert daemon.value("sessionkeeper_database_up") == 1
    assert daemon.stop() == 0


def test_readyz_needs_the_migrated_schema(
    empty_database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(
        empty_database_url, SESSIONKEEPER_MIGRATE_ON_START="false", **every_job(NEVER)
    )
    status, reason = daemon.get("/readyz")
    assert status == 503 and reason.startswith("schema not migrated")
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.value("sessionkeeper_database_up") == 1
    assert daemon.stop() == 0
