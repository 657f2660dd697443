"""Maintenance windows on a real PostgreSQL: a run that its window's close stops at a batch
boundary, the next window finishing the work, slots skipped outside the window (all in the
run ledger), the daemon's window metrics over HTTP, and the CLI.

Time is the ``clock`` and ``now`` given to the runner: every batch boundary moves the clock
on, so the window closes in the middle of a run without any waiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_support import daemon_env
from test_daemon import Daemon, wait_for

from sessionkeeper.jobs import usage_rollup
from sessionkeeper.jobs.locking import job_lock
from sessionkeeper.jobs.runner import run_job
from sessionkeeper.jobs.window import Window, zone

Conn = psycopg.Connection[tuple[Any, ...]]
UTC_ZONE = zone("UTC")
NIGHT = Window.parse("02:00-05:00", UTC_ZONE)


class Clock:
    """The runner's clock, moved on by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def connector(url: str) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: psycopg.connect(url, autocommit=True)


def pending_usage(conn: Conn, count: int) -> None:
    """``count`` raw usage rows for usage_rollup to roll up (one a batch of 2 handles in
    ``count // 2 + 1`` batches)."""
    user = conn.execute(
        "INSERT INTO users (channel, channel_user_id) VALUES ('telegram', %s) RETURNING user_id",
        (uuid.uuid4().hex,),
    ).fetchone()
    assert user is not None
    for minutes in range(count):
        conn.execute(
            "INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens,"
            " cached_tokens, created_at) VALUES (%s, 'telegram', 1, 1, 1, %s)",
            (user[0], datetime(2026, 3, 10, 12, tzinfo=UTC) - timedelta(minutes=minutes)),
        )


def rolled_up(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_daily").fetchone()
    assert row is not None
    return int(row[0])


def ledger(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT outcome, rows, error, details FROM job_runs ORDER BY run_id"
    ).fetchall()


def scheduled_run(url: str, clock: Clock, window: Window, pause: Callable[[float], bool]) -> Any:
    """usage_rollup in batches of 2, as the daemon runs it in the slot starting now."""
    return run_job(
        connector(url),
        "usage_rollup",
        usage_rollup.Settings(batch_size=2),
        replica_id="a",
        now=clock(),
        slot=clock().isoformat(),
        pause=pause,
        window=window,
        clock=clock,
    )


def test_a_run_stops_when_its_window_closes_and_the_next_window_finishes_it(
    database_url: str, conn: Conn
) -> None:
    pending_usage(conn, 7)
    clock = Clock(datetime(2026, 3, 11, 3, 30, tzinfo=UTC))
    boundaries: list[int] = []

    def an_hour_a_batch(seconds: float) -> bool:
        boundaries.append(rolled_up(conn))
        clock.now += timedelta(hours=1)
        return False

    # 03:30: batch 1; 04:30: batch 2; 05:30, the window closed: stop before batch 3.
    first = scheduled_run(database_url, clock, NIGHT, an_hour_a_batch)
    assert (first.outcome, first.rows) == ("stopped", 4)
    assert first.details["reason"] == "window closed"
    assert boundaries == [2, 4]
    assert rolled_up(conn) == 4  # both batches committed: nothing is half-done

    # Later that day: outside the window, the slot is skipped and nothing is done.
    clock.now = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)
    outside = scheduled_run(database_url, clock, NIGHT, an_hour_a_batch)
    assert (outside.outcome, outside.error) == ("skipped", "outside its window 02:00-05:00 UTC")
    assert rolled_up(conn) == 4

    # The next night the run resumes where the last one stopped, and finishes.
    clock.now = datetime(2026, 3, 12, 2, 0, tzinfo=UTC)
    boundaries.clear()
    second = scheduled_run(database_url, clock, NIGHT, an_hour_a_batch)
    assert (second.outcome, second.rows) == ("success", 3)
    assert boundaries == [6]
    assert rolled_up(conn) == 7

    window = {"window": "02:00-05:00 UTC"}
    assert ledger(conn) == [
        (
            "stopped",
            4,
            None,
            {
                "slot": "2026-03-11T03:30:00+00:00",
                **window,
                "reason": "window closed",
                "stopped": True,
                **first.details,
            },
        ),
        (
            "skipped",
            0,
            "outside its window 02:00-05:00 UTC",
            {
                "slot": "2026-03-11T12:00:00+00:00",
                **window,
                "window_opens": "2026-03-12T02:00:00+00:00",
                "slots_skipped": 1,
                "last_slot": "2026-03-11T12:00:00+00:00",
            },
        ),
        ("success", 3, None, {"slot": "2026-03-12T02:00:00+00:00", **window, **second.details}),
    ]


def test_a_long_pause_that_outlasts_the_window_stops_the_run_after_it(
    database_url: str, conn: Conn
) -> None:
    pending_usage(conn, 5)
    clock = Clock(datetime(2026, 3, 11, 4, 59, tzinfo=UTC))

    def pause(seconds: float) -> bool:  # the window closes while the job pauses
        clock.now += timedelta(minutes=2)
        return False

    report = scheduled_run(database_url, clock, NIGHT, pause)
    assert (report.outcome, report.rows, report.details["reason"]) == (
        "stopped",
        2,
        "window closed",
    )


def test_a_stop_request_is_not_taken_for_the_window_closing(database_url: str, conn: Conn) -> None:
    pending_usage(conn, 5)
    clock = Clock(datetime(2026, 3, 11, 3, 0, tzinfo=UTC))
    report = scheduled_run(database_url, clock, NIGHT, lambda seconds: True)
    assert (report.outcome, report.rows) == ("stopped", 2)
    assert "reason" not in report.details
    assert ledger(conn)[0][3]["stopped"] is True


def test_a_closed_window_is_one_ledger_row_whatever_the_slots_and_replicas(
    database_url: str, conn: Conn
) -> None:
    def slot(replica: str, at: datetime) -> Any:
        return run_job(
            connector(database_url),
            "usage_rollup",
            usage_rollup.Settings(),
            replica_id=replica,
            now=at,
            slot=at.isoformat(),
            window=NIGHT,
        )

    # Two replicas fire for each of three slots after the window closed: one row between them,
    # three slots counted (a slot both replicas fire for counts once).
    morning = datetime(2026, 3, 11, 5, 0, tzinfo=UTC)
    for minutes in range(3):
        for replica in ("a", "b"):
            report = slot(replica, morning + timedelta(minutes=minutes))
            assert (report.outcome, report.error) == (
                "skipped",
                "outside its window 02:00-05:00 UTC",
            )
    opens = "2026-03-12T02:00:00+00:00"
    closed = {"window": "02:00-05:00 UTC", "window_opens": opens}
    assert ledger(conn) == [
        (
            "skipped",
            0,
            "outside its window 02:00-05:00 UTC",
            {
                "slot": morning.isoformat(),
                **closed,
                "slots_skipped": 3,
                "last_slot": "2026-03-11T05:02:00+00:00",
            },
        )
    ]
    # The replica without the lock records nothing: the holder records the slot (or is a run
    # the window's close stops, which records itself).
    with psycopg.connect(database_url, autocommit=True) as holder, job_lock(holder, "usage_rollup"):
        held = slot("b", morning + timedelta(minutes=3))
    assert (held.outcome, held.details["window_opens"]) == ("skipped", opens)
    assert ledger(conn)[0][3]["slots_skipped"] == 3
    later = slot("a", morning + timedelta(hours=10))
    assert later.outcome == "skipped"
    assert len(ledger(conn)) == 1
    assert ledger(conn)[0][3]["slots_skipped"] == 4

    # status says how long the job has waited, and when its window opens.
    status = sessionkeeper(database_url, "status")
    assert status.returncode == 0, status.stderr
    [line] = [line for line in status.stdout.splitlines() if line.startswith("usage_rollup:")]
    assert line.startswith("usage_rollup: skipped ")  # when the first slot was skipped
    assert line.endswith(
        "rows=0 (a) outside its window 02:00-05:00 UTC, 4 slots skipped to"
        " 2026-03-11 15:00:00+0000, opens 2026-03-12 02:00:00+0000"
    )

    # The window opens: a run; once it closes again, a new closed period has a row of its own.
    night = datetime(2026, 3, 12, 2, 0, tzinfo=UTC)
    assert slot("b", night).outcome == "success"
    assert slot("a", night + timedelta(hours=3)).outcome == "skipped"
    assert [
        (row[0], row[3].get("window_opens"), row[3].get("slots_skipped")) for row in ledger(conn)
    ] == [
        ("skipped", opens, 4),
        ("success", None, None),
        ("skipped", "2026-03-13T02:00:00+00:00", 1),
    ]


@pytest.mark.parametrize(
    ("now", "outcome"),
    [
        ("2026-01-05 20:59", "skipped"),  # 21:59 in Berlin
        ("2026-01-05 21:00", "success"),  # 22:00
        ("2026-01-06 00:30", "success"),  # 01:30, past midnight
        ("2026-07-06 00:30", "skipped"),  # 02:30 in summer time
        ("2026-07-05 20:30", "success"),  # 22:30 in summer time
    ],
)
def test_a_wrapping_window_in_a_time_zone_decides_each_slot(
    database_url: str, conn: Conn, now: str, outcome: str
) -> None:
    evening = Window.parse("22:00-02:00", zone("Europe/Berlin"))
    clock = Clock(datetime.fromisoformat(now).replace(tzinfo=UTC))
    report = scheduled_run(database_url, clock, evening, lambda seconds: False)
    assert report.outcome == outcome
    assert [row[0] for row in ledger(conn)] == [outcome]


# -- the daemon and the CLI, as processes (real time) --------------------------------------------


def window_around(now: datetime, start_hours: float, end_hours: float) -> str:
    """A window from ``now + start_hours`` to ``now + end_hours``, whole minutes, in UTC."""
    start, end = now + timedelta(hours=start_hours), now + timedelta(hours=end_hours)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for each in started:
        each.kill()


def test_the_daemon_skips_slots_outside_a_window_and_exports_what_waits(
    database_url: str, conn: Conn, daemon: list[Daemon], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    env = daemon_env(
        database_url,
        SESSIONKEEPER_PROACTIVE_RELOAD_SCHEDULE="1",
        SESSIONKEEPER_PROACTIVE_RELOAD_WINDOW=window_around(now, -1, 1),
        SESSIONKEEPER_LINK_CODE_EXPIRY_SCHEDULE="1",
        SESSIONKEEPER_LINK_CODE_EXPIRY_WINDOW=window_around(now, 2, 3),
    )
    started = Daemon(env, tmp_path / "daemon.log")
    daemon.append(started)
    runs = "sessionkeeper_job_runs_total"

    def both_ran() -> bool:
        waited = started.value(runs, job_name="link_code_expiry", outcome="skipped") or 0
        ran = started.value(runs, job_name="proactive_reload", outcome="success") or 0
        return waited >= 3 and ran >= 1

    wait_for(both_ran, "skipped slots of link_code_expiry and a run of proactive_reload")
    assert started.value(runs, job_name="link_code_expiry", outcome="success") == 0
    assert started.value("sessionkeeper_job_window_open", job_name="link_code_expiry") == 0
    assert started.value("sessionkeeper_job_window_open", job_name="proactive_reload") == 1
    assert started.value("sessionkeeper_job_window_open", job_name="session_archival") == 1
    opens = started.value(
        "sessionkeeper_job_window_next_open_timestamp_seconds", job_name="link_code_expiry"
    )
    expected = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    assert opens == expected.timestamp()
    for job in ("proactive_reload", "session_archival"):
        assert (
            started.value("sessionkeeper_job_window_next_open_timestamp_seconds", job_name=job) == 0
        )
        assert started.value("sessionkeeper_job_window_stops_total", job_name=job) == 0
    # Every skipped slot counted in the one row of the closed window (recorded before the
    # metric counts it).
    [skipped] = conn.execute(
        "SELECT error, details ->> 'window', (details ->> 'slots_skipped')::int FROM job_runs"
        " WHERE job = 'link_code_expiry'"
    ).fetchall()
    window = f"{window_around(now, 2, 3)} UTC"
    assert skipped[:2] == (f"outside its window {window}", window)
    assert skipped[2] >= 3
    assert started.wait_for_log(
        lambda r: r["message"].startswith(f"job link_code_expiry every 1s, in its window {window}"),
        "the window in the start-up log",
    )
    assert started.stop() == 0


def sessionkeeper(
    database_url: str, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.pop("DATABASE_URL", None)
    env.update(SESSIONKEEPER_DATABASE_URL=database_url, **settings)
    return subprocess.run(
        [sys.executable, "-m", "sessionkeeper", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW", "2:00-25:00"),
        ("SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW", "nightly"),
        ("SESSIONKEEPER_WINDOW_TIMEZONE", "Berlin"),
    ],
)
def test_the_daemon_refuses_to_start_with_a_bad_window(
    database_url: str, name: str, value: str
) -> None:
    result = sessionkeeper(database_url, "run", **{name: value})
    # As every bad setting: one line, exit 1, and the daemon never started.
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"sessionkeeper: invalid setting {name}: '{value}' is not a ")


def test_jobs_run_ignores_the_window_unless_told_to_keep_to_it(
    database_url: str, conn: Conn
) -> None:
    now = datetime.now(UTC)
    closed = {"SESSIONKEEPER_USAGE_ROLLUP_WINDOW": window_around(now, 2, 3)}
    kept = sessionkeeper(database_url, "jobs", "run", "usage_rollup", "--in-window", **closed)
    assert kept.returncode == 3, kept.stderr
    assert f"(outside its window {window_around(now, 2, 3)} UTC)" in kept.stdout
    by_hand = sessionkeeper(database_url, "jobs", "run", "usage_rollup", **closed)
    assert by_hand.returncode == 0, by_hand.stderr
    outcomes = conn.execute("SELECT outcome FROM job_runs ORDER BY run_id").fetchall()
    assert outcomes == [("skipped",), ("success",)]


def test_jobs_list_shows_the_window_and_the_next_run_inside_it(database_url: str) -> None:
    result = sessionkeeper(
        database_url,
        "jobs",
        "list",
        SESSIONKEEPER_WINDOW_TIMEZONE="Europe/Berlin",
        SESSIONKEEPER_SESSION_ARCHIVAL_SCHEDULE="15m",
        SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW="02:00-05:00",
        # Noon UTC is never between 02:00 and 05:00 in Berlin: a schedule to fix.
        SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE="0 12 * * *",
        SESSIONKEEPER_USAGE_ROLLUP_WINDOW="02:00-05:00",
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    archival = rows["session_archival"]
    assert "every 900s, in 02:00-05:00 Europe/Berlin" in archival
    when = datetime.strptime(archival.split("Berlin")[1].split()[0], "%Y-%m-%d").date()
    next_run = datetime.fromisoformat(f"{when} {archival.split('Berlin')[1].split()[1]}+00:00")
    assert Window.parse("02:00-05:00", zone("Europe/Berlin")).is_open(next_run)
    assert datetime.now(UTC) <= next_run <= datetime.now(UTC) + timedelta(days=1)
    assert "never in its window" in rows["usage_rollup"]


# `jobs run --in-window` in a process whose clock freezegun holds at 04:59, moved to 05:01 when
# the test creates the file named by argv[1] (then the process creates argv[1] + ".moved").
FROZEN_CLI = """
import pathlib, sys, threading, time
from freezegun import freeze_time
from sessionkeeper.cli import main

signal = pathlib.Path(sys.argv[1])
with freeze_time("2026-03-11 04:59:00") as frozen:
    def move() -> None:
        while not signal.exists():
            time.sleep(0.01)
        frozen.move_to("2026-03-11 05:01:00")
        signal.with_suffix(".moved").touch()

    threading.Thread(target=move, daemon=True).start()
    code = main(sys.argv[2:])
sys.exit(code)
"""


def test_jobs_run_in_window_stops_at_a_batch_boundary_when_the_window_closes(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    pending_usage(conn, 5)
    signal = tmp_path / "close"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.pop("DATABASE_URL", None)
    env.update(
        SESSIONKEEPER_DATABASE_URL=database_url,
        SESSIONKEEPER_USAGE_ROLLUP_WINDOW="02:00-05:00",
        SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE="2",
    )
    command = [sys.executable, "-c", FROZEN_CLI, str(signal)]
    with psycopg.connect(database_url) as holder:
        # The first batch waits for the rollup's watermark row while the window closes.
        holder.execute("SELECT watermark FROM usage_rollup_state FOR UPDATE")
        process = subprocess.Popen(
            [*command, "jobs", "run", "usage_rollup", "--in-window"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_for(
                lambda: (
                    conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
                    != (0,)
                ),
                "the first batch waiting for the watermark",
            )
            signal.touch()
            wait_for(signal.with_suffix(".moved").exists, "the process's clock past 05:00")
        finally:
            holder.rollback()
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 4, stderr
    assert "usage_rollup: stopped rows=2 " in stdout
    assert "(window closed: 2 done, " in stdout
    [(outcome, rows, error, details)] = ledger(conn)
    assert (outcome, rows, error) == ("stopped", 2, None)
    assert (details["trigger"], details["reason"]) == ("manual", "window closed")
    assert rolled_up(conn) == 2
