"""Yielding by measurement (sessionkeeper/daemon/pacing.py): a real job, a real probe, a real
extra load on the server. The pacer's waits are recorded instead of slept, so the test measures
its decisions, not the clock."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import TEST_LOGINS, as_login

from sessionkeeper.daemon.config import load_config
from sessionkeeper.daemon.pacing import (
    PacedRun,
    Pacer,
    PaceState,
    YieldSettings,
    connection_probe,
    paced,
)
from sessionkeeper.daemon.service import Daemon
from sessionkeeper.jobs import session_archival, usage_rollup
from sessionkeeper.jobs.base import Pause, uninterrupted
from sessionkeeper.jobs.locking import job_lock
from sessionkeeper.jobs.runner import run_job
from store.errors import ConfigurationError

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
# The extra load: a neighbour that keeps taking the lock of a table every turn reads, 20 ms at a
# time (what a careless migration or a long transaction does to the bots). Lock waits, unlike
# CPU contention on a machine shared with other work, raise the bots' latency every time.
LOAD_CONNECTIONS = 2
LOAD_STATEMENT = "LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(0.02)"


@contextmanager
def extra_load(url: str) -> Iterator[threading.Event]:
    """Runs the extra load for the block (or until the yielded event is set)."""
    stop = threading.Event()
    # The block starts once every load connection is open and about to run its statement.
    connected = threading.Barrier(LOAD_CONNECTIONS + 1)

    def work() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            connected.wait()
            while not stop.is_set():
                conn.execute(LOAD_STATEMENT)

    threads = [threading.Thread(target=work) for _ in range(LOAD_CONNECTIONS)]
    for thread in threads:
        thread.start()
    connected.wait()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def backlog(conn: Conn, sessions: int) -> None:
    user = conn.execute(
        "INSERT INTO users (channel, channel_user_id) VALUES ('telegram', %s) RETURNING user_id",
        (uuid.uuid4().hex,),
    ).fetchone()
    assert user is not None
    conn.execute(
        "INSERT INTO sessions (user_id, last_active) SELECT %s, %s FROM generate_series(1, %s)",
        (user[0], NOW - timedelta(days=60), sessions),
    )


def stop_after(pause: Pause, boundaries: int) -> Pause:
    """``pause``, asking the run to stop once it was called ``boundaries`` times."""
    calls = itertools.count(1)

    def paced(seconds: float) -> bool:
        return pause(seconds) or next(calls) >= boundaries

    return paced


@pytest.mark.slow
def test_a_job_backs_off_under_extra_load_and_finishes_once_it_stops(
    database_url: str, conn: Conn
) -> None:
    backlog(conn, 60)
    probe, close = connection_probe(database_url, "session_archival")
    waits: list[float] = []
    states: list[PaceState] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)  # recorded, not slept: the load below is what the probe sees
        return False

    def record(state: PaceState, yielded: float) -> None:
        states.append(dataclasses.replace(state))

    # The load's lock waits are tens of ms; a rise under 10 ms is the noise of a loaded test
    # machine (the signal is a p90: a few slow probes in ten move it).
    yielding = YieldSettings(step_seconds=0.05, max_pause_seconds=0.4, min_rise_seconds=0.01)
    pacer = Pacer("session_archival", yielding, probe, wait, record)
    settings = session_archival.Settings(batch_size=1, pause_ratio=0, pause_seconds=0)
    try:
        # Five batch boundaries idle, twenty under the extra load, and the rest after it.
        idle = session_archival.run(conn, settings, NOW, stop_after(pacer, 5))
        with extra_load(database_url):
            loaded = session_archival.run(conn, settings, NOW, stop_after(pacer, 20))
        after = session_archival.run(conn, settings, NOW, pacer)
    finally:
        close()
    assert (idle.rows, loaded.rows, after.rows) == (5, 20, 35)
    assert idle.stopped and loaded.stopped and not after.stopped  # the job finished
    extra = [state.extra_pause_seconds for state in states[1:]]  # states[0]: the baseline
    assert len(extra) == len(waits) == 5 + 20 + 35
    # Idle: no yield. Under the load the probe is over budget and the pause doubles up to its
    # cap. After it the pause shrinks step by step, back to nothing.
    assert extra[:5] == [0.0] * 5
    assert any(s.signal_seconds > s.limit_seconds for s in states[6:26])
    assert max(extra[5:25]) == yielding.max_pause_seconds
    assert 0.0 in extra[25:] and extra[-1] < yielding.max_pause_seconds
    # What the job asked to wait is its own pause plus the yield's.
    assert waits == pytest.approx(extra)


def test_a_failing_probe_keeps_the_pace_and_the_job_going() -> None:
    def probe() -> float:
        raise psycopg.OperationalError("the probe's connection is gone")

    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    pacer = Pacer("usage_rollup", YieldSettings(), probe, wait)
    assert pacer(0.25) is False
    assert waits == [0.25]


def test_a_login_that_may_not_probe_runs_the_job_at_its_pace_and_says_so(
    database_url: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    # The reader role may read job_probes but not write it: the probe fails at its first try.
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    reader = as_login(database_url, TEST_LOGINS["reader"])
    with (
        caplog.at_level("WARNING", logger="sessionkeeper.pacing"),
        paced("usage_rollup", YieldSettings(), reader, wait) as run,
    ):
        run.begin()
        assert run.pause(0.25) is False
    assert waits == [0.25]  # the job's own pause, nothing added
    assert "job usage_rollup runs without yielding: the probe failed" in caplog.text
    assert "job_probes" in caplog.text
    assert conn.execute("SELECT count(*) FROM job_probes").fetchone() == (0,)


def test_a_run_skipped_on_this_replica_probes_nothing(database_url: str, conn: Conn) -> None:
    def connect() -> Conn:
        return psycopg.connect(database_url, autocommit=True)

    def run_rollup(paced_run: PacedRun) -> str:
        return run_job(
            connect,
            "usage_rollup",
            usage_rollup.Settings(),
            replica_id="pacing-test",
            pause=paced_run.pause,
            begin=paced_run.begin,
        ).outcome

    def probed() -> list[tuple[str]]:
        return conn.execute("SELECT job FROM job_probes").fetchall()

    with paced("usage_rollup", YieldSettings(), database_url, uninterrupted) as paced_run:
        # Another replica holds the job's lock: the run is skipped before its first batch.
        with connect() as other, job_lock(other, "usage_rollup") as taken:
            assert taken
            assert run_rollup(paced_run) == "skipped"
        assert probed() == []
    with paced("usage_rollup", YieldSettings(), database_url, uninterrupted) as paced_run:
        assert run_rollup(paced_run) == "success"
        assert probed() == [("usage_rollup",)]


def test_the_probe_writes_its_job_s_row_and_nothing_else(database_url: str, conn: Conn) -> None:
    probe, close = connection_probe(database_url, "usage_rollup")
    try:
        assert probe() > 0 and probe() > 0
    finally:
        close()
    rows = conn.execute("SELECT job, probed_at <= now() FROM job_probes").fetchall()
    assert rows == [("usage_rollup", True)]


def test_yielding_is_configured_and_can_be_turned_off() -> None:
    config = load_config(
        {"SESSIONKEEPER_YIELD_TO_BOTS": "false", "SESSIONKEEPER_YIELD_BUDGET": "1"}
    )
    assert config.yielding == YieldSettings(enabled=False, budget=1.0)
    with pytest.raises(ConfigurationError, match="SESSIONKEEPER_YIELD_BUDGET"):
        load_config({"SESSIONKEEPER_YIELD_BUDGET": "-1"})


def _batches_that_lock_users(url: str, pacer: Pacer, batches: int) -> None:
    """A job whose every batch keeps the lock of ``users`` for 0.1 s (what a heavy batch does
    to the bots), calling the pacer at its batch boundaries, when it holds nothing."""
    with psycopg.connect(url) as job:
        for _ in range(batches):
            with job.transaction():
                job.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(0.1)")
            pacer(0.0)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [True, False], ids=["sampled", "boundaries-only"])
def test_the_probe_sees_what_the_jobs_own_batches_do_to_the_bots(
    database_url: str, sampling: bool
) -> None:
    # Probed only at its batch boundaries, a job meets the server at the moment it has just
    # stopped working: its own batches are invisible. The sampling thread probes during them.
    probe, close = connection_probe(database_url, "session_archival")
    states: list[PaceState] = []
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)  # recorded, not slept
        return False

    # A rise under 20 ms is no signal here: a loaded test machine wakes a sleeping process
    # late by a few ms, and the lock waits this job causes are tens of ms.
    settings = YieldSettings(sample_every=0.01, min_rise_seconds=0.02)

    def record(state: PaceState, yielded: float) -> None:
        states.append(dataclasses.replace(state))

    pacer = Pacer("session_archival", settings, probe, wait, record)
    try:
        pacer.start()
        if sampling:
            with pacer.sampling():
                _batches_that_lock_users(database_url, pacer, 8)
        else:
            _batches_that_lock_users(database_url, pacer, 8)
    finally:
        close()
    felt = [s.signal_seconds > s.limit_seconds for s in states[1:]]
    assert len(felt) == 8
    if sampling:
        # Probes waited on the batches' lock: the job is felt and its pause grows.
        assert felt[-1] and max(waits) >= settings.step_seconds
    else:
        assert not any(felt) and waits == [0.0] * 8


def test_a_run_that_ended_shows_no_extra_pause(database_url: str) -> None:
    # A budget of nothing: any rise of the probe over its idle baseline is felt.
    config = load_config(
        {
            "SESSIONKEEPER_YIELD_BUDGET": "0",
            "SESSIONKEEPER_YIELD_MIN_RISE_SECONDS": "0",
            "SESSIONKEEPER_YIELD_STEP_SECONDS": "0.01",
        }
    )
    daemon = Daemon(config, database_url, "head")
    metrics = daemon.metrics.registry

    def gauge(name: str) -> float | None:
        return metrics.get_sample_value(f"sessionkeeper_job_{name}", {"job_name": "usage_rollup"})

    with daemon._paced("usage_rollup") as run:
        # The baseline is idle; then the extra load makes the sampled probes wait. Batch
        # boundaries until the pacer has seen enough of them to yield.
        run.begin()
        with extra_load(database_url):
            deadline = time.monotonic() + 30
            while not gauge("yield_pause_seconds") and time.monotonic() < deadline:
                assert run.pause(0) is False
        assert gauge("yield_pause_seconds") == pytest.approx(0.01)
        budget = gauge("probe_budget_seconds")
        assert budget is not None and budget > 0
    # The run is over: no pace is taken now; what the probe measured last stays.
    assert gauge("yield_pause_seconds") == 0
    assert gauge("probe_budget_seconds") == budget
