"""A real PostgreSQL failover under load: a three-node Patroni cluster (synchronous
replication) on loopback, bots (``Store`` and ``AsyncStore``) and two daemon replicas on
multi-host URLs, then a planned switchover, a ``kill -9`` of the primary's postmaster and a
switchover behind PgBouncer.

Required after each event: every ``finish_turn`` that returned is stored, once, in order, with
its usage; no duplicate users or sessions; calls during the gap fail with
``DatabaseUnavailable`` within the configured timeouts (never a raw driver error); the store
serves again without a restart within ``RECOVERY_BOUND``; the daemons run their jobs on the new
primary, no job slot succeeds twice, no run is left ``running``. The figures measured are
printed (``pytest -s``) and summarised in docs/deploy.md (High availability).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_support import daemon_env, every_job
from patroni_support import Node, PatroniCluster, connect, missing_tools
from tool_support import unavailable

import store
from sessionkeeper.admin import migrate
from sessionkeeper.jobs import JOB_NAMES
from store import AsyncStore, DatabaseUnavailable, Store

pytestmark = pytest.mark.slow

# Store settings of the bots: failures surface within these.
POOL_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2
STATEMENT_TIMEOUT_MS = 3000
# Longest a failing call may take: waiting for a connection, then the statement (slack for a
# loaded two-core machine).
FAIL_BOUND = POOL_TIMEOUT + STATEMENT_TIMEOUT_MS / 1000 + 2.0
# From the event (switchover request, kill) until a bot's turn is stored again; measured
# 2-4 s here (see docs/deploy.md, High availability).
RECOVERY_BOUND = 20.0
STORE_WORKERS = 3  # threads sharing one Store; plus one AsyncStore worker
PACE = 0.02  # seconds between a worker's turns: a steady load, not a saturating one


@dataclass
class Worker:
    """One bot user's turns: what was acknowledged, what failed and how long failing took."""

    name: str
    acked: list[tuple[int, store.Appended]] = field(default_factory=list)
    failures: list[tuple[float, float, DatabaseUnavailable]] = field(default_factory=list)
    raw_errors: list[BaseException] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # completion times of finish_turn
    retried: int = 0


class Load:
    """Turns from several threads (one Store) and one asyncio task (an AsyncStore)."""

    def __init__(self, url: str, users: str, **settings: Any) -> None:
        options = {
            "pool_timeout": POOL_TIMEOUT,
            "connect_timeout": CONNECT_TIMEOUT,
            "statement_timeout_ms": STATEMENT_TIMEOUT_MS,
            "rate_per_minute": 1_000_000,
            "max_size": STORE_WORKERS,
            **settings,
        }
        self.store = Store(url, **options)
        self.async_options = {**options, "max_size": 2}
        self.url = url
        self.stop = threading.Event()
        self.workers = [Worker(f"{users}-{k}") for k in range(STORE_WORKERS)]
        self.workers.append(Worker(f"{users}-async"))
        self.threads = [
            threading.Thread(target=self._sync_worker, args=(w,)) for w in self.workers[:-1]
        ]
        self.threads.append(threading.Thread(target=self._async_worker, args=(self.workers[-1],)))

    def __enter__(self) -> Load:
        self.store.pool.wait(timeout=30)
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.store.close()

    def _sync_worker(self, worker: Worker) -> None:
        calls = _SyncCalls(self.store)
        i = 0
        while not self.stop.is_set():
            i += 1
            calls.turn(worker, i)
            self.stop.wait(PACE)

    def _async_worker(self, worker: Worker) -> None:
        async def run() -> None:
            async with AsyncStore(self.url, **self.async_options) as db:
                calls = _AsyncCalls(db)
                i = 0
                while not self.stop.is_set():
                    i += 1
                    await calls.turn(worker, i)
                    await asyncio.sleep(PACE)

        asyncio.run(run())

    def all_failures(self) -> list[tuple[float, float, DatabaseUnavailable]]:
        return sorted(f for w in self.workers for f in w.failures)

    def served_after(self, moment: float) -> float | None:
        """Completion time of the first turn stored after ``moment`` by every worker."""
        times = [next((t for t in w.successes if t > moment), None) for w in self.workers]
        return None if None in times else max(t for t in times if t is not None)


class _SyncCalls:
    def __init__(self, db: Store) -> None:
        self.db = db

    def turn(self, worker: Worker, i: int) -> None:
        started = time.monotonic()
        try:
            turn = self.db.begin_turn("telegram", worker.name)

            def finish() -> store.Appended:
                return self.db.finish_turn(
                    turn, f"q{i}", f"a{i}", input_tokens=i, output_tokens=2 * i, max_pairs=10**5
                )

            try:
                done = finish()
            except DatabaseUnavailable as exc:
                if not exc.in_doubt:
                    raise
                worker.failures.append((started, time.monotonic(), exc))
                # The turn may be stored: retry with the same Turn until it is known.
                done = _retry(finish)
                worker.retried += 1
            worker.acked.append((i, done))
            worker.successes.append(time.monotonic())
        except DatabaseUnavailable as exc:
            worker.failures.append((started, time.monotonic(), exc))
        except Exception as exc:  # a raw driver error: the test fails on it
            worker.raw_errors.append(exc)


class _AsyncCalls:
    def __init__(self, db: AsyncStore) -> None:
        self.db = db

    async def turn(self, worker: Worker, i: int) -> None:
        started = time.monotonic()
        try:
            turn = await self.db.begin_turn("telegram", worker.name)

            async def finish() -> store.Appended:
                return await self.db.finish_turn(
                    turn, f"q{i}", f"a{i}", input_tokens=i, output_tokens=2 * i, max_pairs=10**5
                )

            try:
                done = await finish()
            except DatabaseUnavailable as exc:
                if not exc.in_doubt:
                    raise
                worker.failures.append((started, time.monotonic(), exc))
                deadline = time.monotonic() + RECOVERY_BOUND
                while True:
                    try:
                        done = await finish()
                        break
                    except DatabaseUnavailable:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(PACE)
                worker.retried += 1
            worker.acked.append((i, done))
            worker.successes.append(time.monotonic())
        except DatabaseUnavailable as exc:
            worker.failures.append((started, time.monotonic(), exc))
        except Exception as exc:
            worker.raw_errors.append(exc)


def _retry(call: Callable[[], store.Appended]) -> store.Appended:
    deadline = time.monotonic() + RECOVERY_BOUND
    while True:
        try:
            return call()
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
        threading.Event().wait(PACE)  # a bot's pause before retrying


class Daemons:
    """Two ``python -m sessionkeeper run`` replicas, every job each second."""

    def __init__(self, url: str, directory: Path) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        for replica in ("a", "b"):
            env = daemon_env(url, SESSIONKEEPER_REPLICA_ID=replica, **every_job("1"))
            log = directory / f"daemon-{replica}.log"
            with log.open("wb") as output:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "sessionkeeper", "run"],
                        stdout=subprocess.DEVNULL,
                        stderr=output,
                        env=env,
                    )
                )
            self.logs.append(log)

    def stop(self) -> list[int]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


@pytest.fixture(scope="module")
def cluster() -> Iterator[PatroniCluster]:
    missing = missing_tools()
    if missing:
        unavailable(f"not installed (apt-get install {' '.join(missing)}; .ci/run does)")
    patroni = PatroniCluster()
    try:
        patroni.start()
        with connect(patroni.url()) as conn:
            conn.execute("CREATE DATABASE sessionkeeper")
        migrate.upgrade(patroni.url("sessionkeeper"))
        yield patroni
    finally:
        patroni.stop()


def server_now(url: str) -> Any:
    with connect(url) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except psycopg.OperationalError:
            result = None
        if result:
            return result
        time.sleep(0.1)  # readiness polling, not time control
    raise AssertionError(f"timed out waiting for {what}")


def fresh_connection_works(url: str) -> bool:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@dataclass
class Figures:
    event: str
    new_primary_after: float  # event -> a fresh read-write connection succeeds
    served_after: float  # event -> every bot worker stored a turn again
    pool_lag: float  # fresh connection possible -> every worker served
    failed_calls: int
    longest_failed_call: float
    in_doubt: int
    messages: dict[str, int]  # what the failed calls said (start of the message: count)

    def show(self) -> None:
        print(json.dumps(self.__dict__))  # the measured figures (pytest -s)


def go_through(
    cluster: PatroniCluster,
    load: Load,
    event: str,
    trigger: Callable[[], Node],
    url: str,
) -> Figures:
    """Run ``trigger`` under ``load`` and measure until every worker is served again."""
    wait_for(lambda: load.served_after(time.monotonic() - 0.5), "load running", 30)
    start = time.monotonic()
    old = trigger()
    # Fresh connections through the same URL, beside the pool: when could one work again?
    gone = wait_for(lambda: not fresh_connection_works(url) or cluster.leader() is not old, "", 30)
    assert gone
    fresh_at = wait_for(
        lambda: fresh_connection_works(url) and time.monotonic(), "a fresh connection", 60
    )
    served_at = wait_for(lambda: load.served_after(fresh_at), "the bots served again", 60)
    failures = [f for f in load.all_failures() if f[0] >= start - FAIL_BOUND]
    figures = Figures(
        event=event,
        new_primary_after=round(fresh_at - start, 2),
        served_after=round(served_at - start, 2),
        pool_lag=round(max(0.0, served_at - fresh_at), 2),
        failed_calls=len(failures),
        longest_failed_call=round(max((end - begin for begin, end, _ in failures), default=0), 2),
        in_doubt=sum(1 for *_, exc in failures if exc.in_doubt),
        messages={},
    )
    for *_, exc in failures:
        said = f"{type(exc).__name__}: {str(exc)[:70]}"
        figures.messages[said] = figures.messages.get(said, 0) + 1
    figures.show()
    assert figures.served_after < RECOVERY_BOUND, figures
    return figures


def check_turns(url: str, load: Load) -> None:
    """Every acknowledged turn stored once, in order, with its usage; no duplicates."""
    assert not [e for w in load.workers for e in w.raw_errors], [
        repr(e) for w in load.workers for e in w.raw_errors
    ]
    for worker in load.workers:
        for begin, end, exc in worker.failures:
            assert end - begin < FAIL_BOUND, (end - begin, exc)
    with connect(url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM users GROUP BY channel, channel_user_id"
            " HAVING count(*) > 1) d"
        ).fetchone() == (0,)
        for worker in load.workers:
            assert worker.acked, worker.name
            sessions = conn.execute(
                "SELECT count(*) FROM sessions s JOIN users u USING (user_id)"
                " WHERE u.channel_user_id = %s",
                (worker.name,),
            ).fetchone()
            assert sessions == (1,), worker.name
            stored = conn.execute(
                "SELECT m.seq, m.role, m.content FROM session_messages m"
                " JOIN sessions s USING (session_id) JOIN users u ON u.user_id = s.user_id"
                " WHERE u.channel_user_id = %s ORDER BY m.seq",
                (worker.name,),
            ).fetchall()
            contents = [content for _, _, content in stored]
            # Each turn's pair is stored once and in place (seq = the Appended's next_seq - 2).
            assert len(contents) == len(set(contents)), f"{worker.name}: a turn stored twice"
            by_seq = {seq: content for seq, _, content in stored}
            acked = [i for i, _ in worker.acked]
            assert acked == sorted(acked)
            for i, appended in worker.acked:
                assert by_seq.get(appended.next_seq - 2) == f"q{i}", (worker.name, i)
                assert by_seq.get(appended.next_seq - 1) == f"a{i}", (worker.name, i)
            usage = {
                row[0]: row[1]
                for row in conn.execute(
                    "SELECT input_tokens, count(*) FROM usage_stats us JOIN users u"
                    " USING (user_id) WHERE u.channel_user_id = %s GROUP BY input_tokens",
                    (worker.name,),
                )
            }
            for i, _ in worker.acked:
                assert usage.get(i) == 1, (worker.name, i, usage.get(i))


def check_daemons(url: str, after: Any) -> None:
    """Every job ran successfully on the new primary since ``after`` (server time)."""

    def every_job_ran() -> bool:
        with connect(url) as conn:
            jobs = {
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT job FROM job_runs WHERE outcome = 'success'"
                    " AND started_at > %s",
                    (after,),
                )
            }
        return jobs == set(JOB_NAMES)

    wait_for(every_job_ran, "every job run on the new primary", 60)


def check_ledger(url: str) -> None:
    with connect(url) as conn:
        # Scheduled runs only: each daemon's start-up makes the partitions ahead once, as
        # `migrate` does (a run without a slot).
        twice = conn.execute(
            "SELECT job, details ->> 'slot', count(*) FROM job_runs"
            " WHERE outcome = 'success' AND details ? 'slot' GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        running = conn.execute(
            "SELECT job, replica_id, started_at FROM job_runs WHERE outcome = 'running'"
        ).fetchall()
    assert twice == [], twice
    assert running == [], running


def test_switchover_and_crash_under_load(cluster: PatroniCluster, tmp_path: Path) -> None:
    url = cluster.url("sessionkeeper")
    daemons = Daemons(url, tmp_path)
    try:
        check_daemons(url, server_now(url))
        with Load(url, "direct") as load:
            for event, trigger in (
                ("switchover", cluster.switchover),
                ("kill -9 of the primary", cluster.kill_primary),
            ):
                before, started = server_now(url), time.monotonic()
                go_through(cluster, load, event, trigger, url)
                check_daemons(url, before)
                ran_after = round(time.monotonic() - started, 2)
                print(json.dumps({"event": event, "every_job_ran_again_after": ran_after}))
                cluster.wait_healthy()  # the old primary back as a standby
        check_turns(url, load)
    finally:
        codes = daemons.stop()
    assert codes == [0, 0], [log.read_text()[-3000:] for log in daemons.logs]
    check_ledger(url)


def test_switchover_behind_pgbouncer(cluster: PatroniCluster) -> None:
    # Transaction pooling: no prepared statements (PgBouncer 1.18), no startup options.
    bouncer = cluster.start_pgbouncer(
        {
            # A call waits at most this long for a server connection during the gap.
            "query_wait_timeout": "5",
            # Retry a failed server login after 1 s, not 15 s: the new primary is used as
            # soon as the role-change callback has repointed PgBouncer.
            "server_login_retry": "1",
            "server_connect_timeout": "3",
        }
    )
    settings = {"prepare_threshold": None, "statement_timeout_ms": None}
    with Load(bouncer, "pgbouncer", **settings) as load:
        go_through(cluster, load, "switchover (PgBouncer)", cluster.switchover, bouncer)
    cluster.wait_healthy()
    check_turns(cluster.url("sessionkeeper"), load)
