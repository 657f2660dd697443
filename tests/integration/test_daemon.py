"""The daemon as a real process on a real PostgreSQL: metrics over HTTP, replicas, faults."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from daemon_support import daemon_env, every_job
from prometheus_client.parser import text_string_to_metric_families
from tool_support import unavailable

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.jobs import JOB_NAMES, partition_maintenance

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

RUNS = "sessionkeeper_job_runs_total"
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

    def __init__(self, env: dict[str, str], log_path: Path, log_level: str = "INFO") -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "sessionkeeper", "--log-format", "json"]
        self.process = subprocess.Popen(
            [*command, "--log-level", log_level, "run"],
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
        """The one sample of ``name`` whose labels include ``labels`` (None: no such sample)."""
        wanted = set(labels.items())
        found = [v for (n, ls), v in self.samples().items() if n == name and wanted <= set(ls)]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

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

    def start(
        database_url: str, replica: str = "a", log_level: str = "INFO", **settings: str
    ) -> Daemon:
        env = daemon_env(database_url, SESSIONKEEPER_REPLICA_ID=replica, **settings)
        daemon = Daemon(env, tmp_path / f"{replica}.log", log_level)
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
        for outcome in ("success", "failure", "skipped", "stopped"):
            # job_name, and the deprecated job beside it (removed in the next release).
            labels = (("job", job), ("job_name", job), ("outcome", outcome))
            assert samples["sessionkeeper_job_runs_total", labels] == 0
        for name in REQUIRED[1:]:
            matching = [
                v
                for (n, ls), v in samples.items()
                if n == name and {("job", job), ("job_name", job)} <= set(ls)
            ]
            assert matching and all(v == 0 for v in matching), (name, job)
    # Every series that has the deprecated job label has job_name too, with the same value.
    for name, label_set in samples:
        found = dict(label_set)
        if "job" in found:
            assert found.get("job_name") == found["job"], (name, label_set)
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
        job: daemon.value("sessionkeeper_job_interval_seconds", job_name=job) for job in JOB_NAMES
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
    # The partitions of three and two days ago, as a daemon running then made them: ended, they
    # are dropped whole with their row.
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=1), three_days_ago)
    conn.execute(
        """
        WITH u AS (
            INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '1')
            RETURNING user_id
        )
        INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)
        SELECT user_id, 60, %s, 3 FROM u
        """,
        (three_days_ago,),
    )
    daemon = start_daemon(database_url, **every_job("1"))

    def all_succeeded() -> bool:
        return all(
            (daemon.value(RUNS, job_name=job, outcome="success") or 0) >= 1 for job in JOB_NAMES
        )

    wait_for(all_succeeded, "a successful run of every job")
    assert daemon.value("sessionkeeper_job_rows_total", job_name="rate_limit_cleanup") == 1
    for job in JOB_NAMES:
        last_success = daemon.value(
            "sessionkeeper_job_last_success_timestamp_seconds", job_name=job
        )
        assert (last_success or 0) > 0
        assert (daemon.value("sessionkeeper_job_duration_seconds_count", job_name=job) or 0) >= 1
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
    """The scheduled runs per (job, slot). Runs without a slot are left out: each replica's
    start-up runs partition_maintenance once (migrate_on_start), as `migrate` does."""
    slots: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for job, slot, replica, outcome in conn.execute(
        "SELECT job, details ->> 'slot', replica_id, outcome FROM job_runs"
        " WHERE details ? 'slot' ORDER BY run_id"
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
    """``count`` sessions idle for 40 days (session_archival's default is 30), one message each."""
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
    assert run == [("stopped", 1, "true")]
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
    assert run == [("stopped", 1, "true")]
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
    failures = {"job_name": "session_archival", "outcome": "failure"}
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


# -- the HTTP port's bounds (daemon/endpoints.py) ---------------------------------------------


def slow_clients(address: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` connections, each sending a request's first lines and never its end."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(address, timeout=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        clients.append(client)
    return clients


def closed_by_server(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def healthz_seconds(daemon: Daemon) -> float:
    started = time.perf_counter()
    assert daemon.get("/healthz") == (200, "ok\n")
    return time.perf_counter() - started


def threads(daemon: Daemon) -> int:
    return len(list(Path(f"/proc/{daemon.process.pid}/task").iterdir()))


def address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def assert_no_traceback(daemon: Daemon) -> None:
    # Every line of stderr is a JSON record: nothing printed around the logger.
    for line in daemon.log_path.read_text().splitlines():
        assert json.loads(line)["level"], line
        assert not line.startswith("Traceback"), line


def test_300_slow_clients_hold_no_threads_and_healthz_answers(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(
        database_url,
        SESSIONKEEPER_METRICS_READ_TIMEOUT_SECONDS="60",
        SESSIONKEEPER_METRICS_MAX_CONNECTIONS="400",
        log_level="DEBUG",
        **every_job(NEVER),
    )
    assert daemon.get("/readyz") == (200, "ready\n")  # the worker threads exist from here
    before = threads(daemon)
    clients = slow_clients(address(daemon), 300)
    try:
        timings = []
        for _ in range(5):  # trickle a byte on each, as a slowloris does, and ask meanwhile
            for client in clients:
                client.sendall(b"X")
            timings.append(healthz_seconds(daemon))
        assert sorted(timings)[2] < 0.1, timings
        assert max(timings) < 1, timings
        assert threads(daemon) <= before, (threads(daemon), before)
        assert not any(closed_by_server(c) for c in clients)  # all 300 held open
        assert daemon.stop() == 0  # stops cleanly with them open
    finally:
        for client in clients:
            client.close()
    assert_no_traceback(daemon)
    assert not [r for r in daemon.records() if r["level"] in ("ERROR", "CRITICAL")]


def test_slow_and_http09_clients_are_closed_and_connections_capped(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(
        database_url,
        SESSIONKEEPER_METRICS_READ_TIMEOUT_SECONDS="2",
        SESSIONKEEPER_METRICS_MAX_CONNECTIONS="50",
        log_level="DEBUG",
        **every_job(NEVER),
    )
    clients = slow_clients(address(daemon), 300)
    try:
        # Over the cap, the oldest unfinished requests make room: at most 50 stay open.
        wait_for(lambda: sum(map(closed_by_server, clients)) >= 250, "evictions", timeout=30)
        assert healthz_seconds(daemon) < 1
        old = socket.create_connection(address(daemon), timeout=10)
        old.sendall(b"GET /healthz\r\n")  # HTTP/0.9: no version, no reply
        assert old.recv(100) == b""
        old.close()
        # The read timeout is a deadline for the whole head: trickling does not extend it.
        trickler = slow_clients(address(daemon), 1)[0]
        started = time.monotonic()
        while not closed_by_server(trickler):
            trickler.setblocking(True)
            trickler.sendall(b"X")
            time.sleep(0.2)
            assert time.monotonic() - started < 30, "a trickling client was never closed"
        assert wait_for(lambda: all(map(closed_by_server, clients)), "read timeouts")
        assert daemon.get("/metrics")[0] == 200
    finally:
        for client in clients:
            client.close()
    records = daemon.records()
    assert any("without a reply" in r["message"] for r in records)
    assert any("oldest unfinished request" in r["message"] for r in records)
    assert daemon.stop() == 0
    assert_no_traceback(daemon)


def cpu_seconds(daemon: Daemon) -> float:
    fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_running_out_of_file_descriptors_does_not_spin_the_accept_loop(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(database_url, log_level="DEBUG", **every_job(NEVER))
    assert daemon.get("/readyz") == (200, "ready\n")
    pid = daemon.process.pid
    in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 5, limits[1]))
    clients = slow_clients(address(daemon), 40)  # the kernel queues what accept() cannot take
    try:
        wait_for(
            lambda: any("out of system resource" in r["message"] for r in daemon.records()),
            "accept() failing with EMFILE",
        )
        # Accepting pauses a second between attempts: over two seconds of it the daemon uses
        # a small fraction of one CPU (a spinning accept loop uses all of it).
        before, started = cpu_seconds(daemon), time.monotonic()
        wait_for(lambda: time.monotonic() - started > 2, "two seconds")
        assert cpu_seconds(daemon) - before < 0.5
    finally:
        for client in clients:
            client.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert daemon.get("/healthz") == (200, "ok\n")  # served again once descriptors are free
    assert daemon.stop() == 0
    assert_no_traceback(daemon)
