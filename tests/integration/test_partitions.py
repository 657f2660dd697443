"""Time partitions of rate_limits and usage_stats: made ahead, dropped whole, and the
watermark rollup that never rewrites a raw row."""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from partition_support import bots_writing, drop_calendar, reporting_lock_waits

from sessionkeeper.admin import migrate
from sessionkeeper.jobs import partition_maintenance, partitions, rate_limit_cleanup, usage_rollup
from store import PartitionMissing, Store

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def no_calendar(conn: Conn) -> None:
    """For tests that make and drop the partitions of NOW themselves."""
    drop_calendar(conn)


DAY = timedelta(days=1)


def make_user(conn: Conn) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO users (channel, channel_user_id) VALUES ('telegram', %s) RETURNING user_id",
        (uuid.uuid4().hex,),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def names(conn: Conn, table: str) -> list[str]:
    return [p.name for p in partitions.list_partitions(conn, (table,))]


def maintain(conn: Conn, now: datetime = NOW, **settings: Any) -> dict[str, Any]:
    result = partition_maintenance.run(conn, partition_maintenance.Settings(**settings), now)
    return result.details


def track(conn: Conn, user: uuid.UUID, at: datetime, tokens: int = 1) -> None:
    conn.execute(
        "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at)"
        " VALUES (%s, 'telegram', %s, %s)",
        (user, tokens, at),
    )


def counted(conn: Conn) -> tuple[int, int]:
    row = conn.execute(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0) FROM usage_daily"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def raw_updates(conn: Conn) -> int:
    """Row updates ever made in the partitions of usage_stats (statistics flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables"
        " WHERE relid IN (SELECT relid FROM pg_partition_tree('usage_stats') WHERE isleaf)"
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- partition_maintenance ---------------------------------------------------------------------


@pytest.mark.usefixtures("no_calendar")
def test_maintenance_makes_partitions_ahead_and_is_idempotent(conn: Conn) -> None:
    details = maintain(conn, ahead=3)
    assert details == {"created": 8, "deferred": 0, "ahead": {"rate_limits": 3, "usage_stats": 3}}
    # (Followed by the days around the real date that revision 0022 made.)
    assert names(conn, "rate_limits")[:4] == [
        "rate_limits_p20260310_0000",
        "rate_limits_p20260311_0000",
        "rate_limits_p20260312_0000",
        "rate_limits_p20260313_0000",
    ]
    assert maintain(conn, ahead=3)["created"] == 0
    # A day later one more is made, and the lead is back.
    assert maintain(conn, NOW + DAY, ahead=3) == {
        "created": 2,
        "deferred": 0,
        "ahead": {"rate_limits": 3, "usage_stats": 3},
    }


@pytest.mark.usefixtures("no_calendar")
def test_a_moment_no_partition_covers_is_refused_and_writes_nothing(
    conn: Conn, database_url: str
) -> None:
    # No DEFAULT partition (revision 0022): a row of a time beyond the partitions is refused
    # with a typed error, whole (begin_turn writes the user and the session in the same
    # statement), and the same call succeeds once partition_maintenance has made its day.
    with Store(database_url, max_size=1) as store:
        for call in (
            lambda: store.begin_turn("telegram", "far", now=NOW),
            lambda: store.check_rate_limit(make_user(conn), now=NOW),
            lambda: store.track_usage(make_user(conn), "telegram", input_tokens=1, now=NOW),
        ):
            with pytest.raises(PartitionMissing, match="no time partition covers this moment"):
                call()
        assert conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE channel_user_id = 'far'),"
            " (SELECT count(*) FROM rate_limits), (SELECT count(*) FROM usage_stats)"
        ).fetchone() == (0, 0, 0)
        maintain(conn, ahead=1)
        store.begin_turn("telegram", "far", now=NOW)
        assert conn.execute("SELECT count(*) FROM rate_limits").fetchone() == (1,)


@pytest.mark.usefixtures("no_calendar")
def test_the_lead_is_zero_when_no_partition_holds_now(conn: Conn) -> None:
    maintain(conn, ahead=2)
    later = partitions.list_partitions(conn)
    assert partitions.ahead(later, "usage_stats", NOW) == 2
    assert partitions.ahead(later, "usage_stats", NOW + 10 * DAY) == 0


# -- retention: whole partitions ---------------------------------------------------------------


@pytest.mark.usefixtures("no_calendar")
def test_rate_limit_cleanup_drops_ended_partitions_without_deleting_rows(conn: Conn) -> None:
    user = make_user(conn)
    maintain(conn, NOW - 5 * DAY, ahead=6)
    for days in range(5):
        conn.execute(
            "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
            " VALUES (%s, 86400, %s, 1), (%s, 60, %s, 1)",
            (user, NOW - (days + 1) * DAY, user, NOW - days * DAY),
        )
    before = len(names(conn, "rate_limits"))
    result = rate_limit_cleanup.run(conn, rate_limit_cleanup.Settings(), NOW)
    # Partitions that ended a day (the longest window) before now: March 5th to 8th.
    assert result.details == {"deleted": 7, "partitions_dropped": 4, "partitions_deferred": 0}
    assert len(names(conn, "rate_limits")) == before - 4
    left = conn.execute("SELECT window_seconds, window_start FROM rate_limits").fetchall()
    assert set(left) == {(86400, NOW - DAY), (60, NOW - DAY), (60, NOW)}


@pytest.mark.usefixtures("no_calendar")
def test_usage_prune_drops_counted_partitions_and_late_rows_are_refused(conn: Conn) -> None:
    user = make_user(conn)
    maintain(conn, NOW - 40 * DAY, ahead=45)
    track(conn, user, NOW - 35 * DAY)
    settings = usage_rollup.Settings(prune_after_seconds=30 * 86400)
    first = usage_rollup.run(conn, settings, NOW)
    assert (first.details["rolled_up"], first.details["partitions_dropped"]) == (1, 10)
    # A late row for a day whose partition is gone: refused (no DEFAULT partition takes it).
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        track(conn, user, NOW - 36 * DAY, 10)
    second = usage_rollup.run(conn, settings, NOW)
    assert second.details == {
        "rolled_up": 0,
        "pruned": 0,
        "partitions_dropped": 0,
        "partitions_kept": 0,
    }
    assert conn.execute("SELECT count(*) FROM usage_stats").fetchone() == (0,)
    assert counted(conn) == (1, 1)


@pytest.mark.usefixtures("no_calendar")
def test_a_partition_holding_uncounted_rows_is_kept(conn: Conn) -> None:
    user = make_user(conn)
    maintain(conn, NOW - 40 * DAY, ahead=2)
    track(conn, user, NOW - 40 * DAY)
    # Prune without rolling up first: the check under the detach's lock keeps the partition.
    dropped = partitions.drop_expired(
        conn,
        "usage_stats",
        NOW - 30 * DAY,
        partitions.DdlSettings(lock_timeout_ms=1000),
        keep_if=usage_rollup._pending,
    )
    assert dropped == (2, 0, 1)
    assert conn.execute("SELECT count(*) FROM usage_stats").fetchone() == (1,)


@pytest.mark.usefixtures("no_calendar")
def test_a_detach_left_pending_is_finished_by_the_next_run(conn: Conn, database_url: str) -> None:
    maintain(conn, NOW - 5 * DAY, ahead=2)  # 03-05, 03-06, 03-07: all ended by NOW
    user = make_user(conn)
    conn.execute(
        "INSERT INTO rate_limits (user_id, window_seconds, window_start) VALUES (%s, 60, %s)",
        (user, NOW - 5 * DAY),
    )
    settings = rate_limit_cleanup.Settings(lock_attempts=2)
    with psycopg.connect(database_url) as reader:
        # A transaction that has used the table: DETACH ... CONCURRENTLY marks the partition,
        # then waits for it, gives up after lock_timeout_ms, and FINALIZE cannot finish either.
        reader.execute("SELECT count(*) FROM rate_limits")
        first = rate_limit_cleanup.run(conn, settings, NOW)
        pending = [p.name for p in partitions.list_partitions(conn) if p.detach_pending]
        # The first is left pending; the others wait (PostgreSQL refuses them meanwhile).
        assert pending == ["rate_limits_p20260305_0000"]
        assert first.details == {"deleted": 0, "partitions_dropped": 0, "partitions_deferred": 3}
        # New statements no longer see the pending partition: its rows are out of reach.
        assert conn.execute("SELECT count(*) FROM rate_limits").fetchone() == (0,)
    # The reader gone, the next run finishes the detach (FINALIZE) and drops the rest.
    second = rate_limit_cleanup.run(conn, settings, NOW)
    assert second.details == {"deleted": 1, "partitions_dropped": 3, "partitions_deferred": 0}
    assert [n for n in names(conn, "rate_limits") if n < "rate_limits_p20260308"] == []
    assert conn.execute("SELECT to_regclass('rate_limits_p20260305_0000')").fetchone() == (None,)


# -- the watermark rollup ----------------------------------------------------------------------


def test_rollup_never_updates_raw_rows(conn: Conn) -> None:
    maintain(conn, ahead=2)
    users = [make_user(conn) for _ in range(3)]
    for i in range(30):
        track(conn, users[i % 3], NOW - timedelta(hours=i), i)
    settings = usage_rollup.Settings(batch_size=7)
    assert usage_rollup.run(conn, settings, NOW).rows == 30
    assert usage_rollup.run(conn, settings, NOW).rows == 0
    assert counted(conn) == (30, sum(range(30)))
    assert raw_updates(conn) == 0


def test_a_transaction_with_more_rows_than_a_batch_is_counted_in_one_run(conn: Conn) -> None:
    user = make_user(conn)
    conn.execute(
        "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at)"
        " SELECT %s, 'telegram', 1, %s FROM generate_series(1, 5)",
        (user, NOW),
    )
    track(conn, user, NOW, 10)
    result = usage_rollup.run(conn, usage_rollup.Settings(batch_size=2), NOW)
    assert result.rows == 6
    assert counted(conn) == (6, 15)


def test_a_row_of_a_transaction_still_running_waits_for_the_next_run(
    conn: Conn, database_url: str
) -> None:
    user = make_user(conn)
    track(conn, user, NOW, 1)
    with psycopg.connect(database_url) as writer:  # a transaction left open
        writer.execute(
            "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at)"
            " VALUES (%s, 'telegram', 100, %s)",
            (user, NOW),
        )
        track(conn, user, NOW, 10)  # a later transaction, committed
        # Nothing from the open transaction on is counted: it could still commit below.
        assert usage_rollup.run(conn, usage_rollup.Settings(), NOW).rows == 1
        writer.commit()
    assert usage_rollup.run(conn, usage_rollup.Settings(), NOW).rows == 2
    assert counted(conn) == (3, 111)


def test_concurrent_rollups_never_count_a_row_twice(conn: Conn, database_url: str) -> None:
    user = make_user(conn)
    for i in range(200):
        track(conn, user, NOW - timedelta(minutes=i), 1)
    start = threading.Barrier(3)
    results: list[int] = []

    def roll() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            start.wait()
            results.append(usage_rollup.run(own, usage_rollup.Settings(batch_size=10), NOW).rows)

    threads = [threading.Thread(target=roll) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(results) == 200
    assert counted(conn) == (200, 200)


def test_erasure_between_rollups_stays_exact(conn: Conn) -> None:
    user, other = make_user(conn), make_user(conn)
    for tokens in (1, 2):
        track(conn, user, NOW, tokens)
    track(conn, other, NOW, 1000)
    usage_rollup.run(conn, usage_rollup.Settings(), NOW)
    track(conn, user, NOW, 4)  # not rolled up yet
    conn.execute("SELECT * FROM sk_forget(%s, NULL)", (user,))
    usage_rollup.run(conn, usage_rollup.Settings(), NOW)
    assert counted(conn) == (4, 1007)
    anonymous = conn.execute(
        "SELECT requests, input_tokens FROM usage_daily WHERE user_id = %s",
        (uuid.UUID(int=0),),
    ).fetchall()
    assert anonymous == [(3, 7)]


# -- bots beside partition DDL -----------------------------------------------------------------


@pytest.mark.slow
def test_bots_never_fail_while_partitions_are_made_and_dropped(
    conn: Conn, database_url: str
) -> None:
    # begin_turn locks the user before rate_limits; finish_turn's usage row (and 0.1.0's
    # check_rate_limit) lock the table before the user (foreign-key check): the job must
    # yield in every lock cycle with either.
    real_now = datetime.now(UTC)
    made = dropped = 0
    with bots_writing(database_url, "bot"):
        for step in range(12):
            # Partitions made a day further ahead each step, and the oldest ones dropped.
            made += maintain(conn, real_now - 8 * DAY, ahead=8 + step)["created"]
            result = rate_limit_cleanup.run(
                conn, rate_limit_cleanup.Settings(), real_now - (6 - step) * DAY
            )
            dropped += result.details["partitions_dropped"]
            usage_rollup.run(
                conn, usage_rollup.Settings(prune_after_seconds=86400), real_now - 6 * DAY
            )
    assert made > 0 and dropped > 0


# -- partition DDL and the bots' lock waits ----------------------------------------------------

# The bound of issue 24: no bot statement waits on a lock of the job's for longer.
LOCK_WAIT_BOUND_MS = 10
_WAITING = re.compile(r"process (\d+) still waiting for .* after ([\d.]+) ms")
_HOLDERS = re.compile(r"Process(?:es)? holding the lock: ([\d, ]+)\. Wait queue: ([\d, ]+)\.")


def waits_on(log: str, job_pid: int) -> list[str]:
    """The server's reports (log_lock_waits, after deadlock_timeout) of a wait that the job
    caused: the job held the lock, or its own request was queued ahead of the waiter's."""
    caused = []
    lines = log.splitlines()
    for line, detail in itertools.pairwise(lines):
        waiting, holding = _WAITING.search(line), _HOLDERS.search(detail)
        if waiting is None or holding is None:
            continue
        holders = {int(p) for p in holding[1].split(",")}
        queue = [int(p) for p in holding[2].split(",")]
        waiter = int(waiting[1])
        ahead = queue[: queue.index(waiter)] if waiter in queue else []
        if job_pid in holders or job_pid in ahead:
            caused.append(f"{line} / {detail}")
    return caused


@pytest.mark.slow
def test_bots_never_wait_on_partition_ddl_beyond_the_bound(
    embedded_server_factory: Any,
) -> None:
    # A server of its own that reports every lock wait longer than the bound.
    server = embedded_server_factory()
    server.start()
    reporting_lock_waits(server, LOCK_WAIT_BOUND_MS)
    url = server.ensure_database("ddl")
    migrate.upgrade(url)
    real_now = datetime.now(UTC)
    # Revision 0022 made the partitions up to a week ahead.
    settings = partition_maintenance.Settings(ahead=7)
    with psycopg.connect(url, autocommit=True) as conn:
        job_pid = conn.info.backend_pid
        # Partitions for the past week and today, as a running daemon would have left them.
        partition_maintenance.run(conn, settings, real_now - 8 * DAY)
        partition_maintenance.run(conn, settings, real_now)
        made = dropped = 0
        with bots_writing(url, "ddl-bot"):
            for step in range(1, 8):
                # One day on: the next partition ahead made, the oldest dropped.
                made += partition_maintenance.run(
                    conn, partition_maintenance.Settings(ahead=7 + step), real_now
                ).details["created"]
                dropped += rate_limit_cleanup.run(
                    conn, rate_limit_cleanup.Settings(), real_now - (7 - step) * DAY
                ).details["partitions_dropped"]
                usage_rollup.run(
                    conn,
                    usage_rollup.Settings(prune_after_seconds=86400),
                    real_now - (7 - step) * DAY,
                )
    assert made >= 7 and dropped > 0
    assert waits_on(server.log_file.read_text(), job_pid) == []


def test_the_wait_reports_are_read_as_the_server_writes_them() -> None:
    # The check above must be able to fail: a report of a wait the job caused is found.
    log = (
        "LOG:  process 42 still waiting for RowExclusiveLock on relation 16500 of database 5"
        " after 12.345 ms\n"
        "DETAIL:  Process holding the lock: 7. Wait queue: 42.\n"
        "LOG:  process 43 still waiting for RowExclusiveLock on relation 16500 of database 5"
        " after 11.000 ms\n"
        "DETAIL:  Processes holding the lock: 8, 9. Wait queue: 7, 43.\n"
        "LOG:  process 44 still waiting for ShareLock on transaction 800 after 10.500 ms\n"
        "DETAIL:  Process holding the lock: 9. Wait queue: 44.\n"
    )
    assert len(waits_on(log, 7)) == 2
    assert waits_on(log, 1) == []
