"""Each maintenance job's effect on real rows, with time passed in or frozen (freezegun)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time
from partition_support import drop_calendar

from sessionkeeper.daemon.metrics import DaemonMetrics
from sessionkeeper.jobs import (
    JOB_NAMES,
    link_code_expiry,
    locking,
    partition_maintenance,
    proactive_reload,
    rate_limit_cleanup,
    session_archival,
    usage_rollup,
)
from sessionkeeper.jobs.runner import JobFailed, run_job
from sessionkeeper.jobs.sql import QUERIES
from store import Store, StoreConfig
from store.errors import NotFound

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
# Schedule slots are the scheduled times of runs (the ledger compares them to real time).
SLOT = datetime.now(UTC).replace(microsecond=0).isoformat()
NEXT_SLOT = (datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)).isoformat()


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def make_user(conn: Conn, channel: str = "telegram", authenticated: bool = True) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO users (channel, channel_user_id, authenticated) VALUES (%s, %s, %s)"
        " RETURNING user_id",
        (channel, uuid.uuid4().hex, authenticated),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def rows(conn: Conn, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


# -- rate_limit_cleanup ------------------------------------------------------------------------


def daily_partitions(conn: Conn, start: datetime, days: int, **settings: Any) -> None:
    """Daily partitions from ``start``'s day on, instead of the test calendar's wide one."""
    drop_calendar(conn)
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=days, **settings), start)


def test_rate_limit_cleanup_drops_a_day_once_its_last_window_ended(conn: Conn) -> None:
    # Whole daily partitions go, once every window starting in them has ended (a day window
    # starting at the day's last second ends a day after the partition).
    daily_partitions(conn, ago(days=3), 4)
    user = make_user(conn)
    windows = {
        (86400, datetime(2026, 3, 8, tzinfo=UTC)): False,  # its partition ended 1.5 days ago
        (60, datetime(2026, 3, 9, 23, 59, tzinfo=UTC)): True,  # ended, its day not yet done
        (86400, datetime(2026, 3, 10, tzinfo=UTC)): True,  # current day
    }
    for seconds, start in windows:
        conn.execute(
            "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
            " VALUES (%s, %s, %s, 5)",
            (user, seconds, start),
        )
    result = rate_limit_cleanup.run(conn, rate_limit_cleanup.Settings(batch_size=1), NOW)
    assert (result.rows, result.details["partitions_dropped"]) == (1, 2)
    left = set(rows(conn, "SELECT window_seconds, window_start FROM rate_limits"))
    assert left == {key for key, kept in windows.items() if kept}


def test_rate_limit_cleanup_grace_keeps_recent_windows(conn: Conn) -> None:
    daily_partitions(conn, ago(days=2), 3)
    user = make_user(conn)
    conn.execute(
        "INSERT INTO rate_limits (user_id, window_seconds, window_start) VALUES (%s, 60, %s)",
        (user, datetime(2026, 3, 8, 23, 59, tzinfo=UTC)),
    )
    settings = rate_limit_cleanup.Settings(grace_seconds=600)
    midnight = datetime(2026, 3, 10, tzinfo=UTC)
    assert rate_limit_cleanup.run(conn, settings, midnight + timedelta(minutes=5)).rows == 0
    assert rate_limit_cleanup.run(conn, settings, midnight + timedelta(minutes=10)).rows == 1


# -- link_code_expiry --------------------------------------------------------------------------


def test_link_code_expiry_removes_old_codes_and_stale_lockouts(conn: Conn) -> None:
    owner, redeemer, locked, failing, stale = (make_user(conn) for _ in range(5))
    codes = {
        "100001": (ago(hours=2), None, False),  # expired beyond retention
        "100002": (ago(minutes=30), None, True),  # expired, within retention
        "100003": (NOW + timedelta(minutes=5), ago(hours=2), False),  # used long ago
        "100004": (NOW + timedelta(minutes=5), ago(minutes=1), True),  # just used
        "100005": (NOW + timedelta(minutes=5), None, True),  # valid
    }
    for code, (expires_at, used_at, _) in codes.items():
        conn.execute(
            "INSERT INTO link_codes (code, user_id, expires_at, used_at, used_by)"
            " VALUES (%s, %s, %s, %s, %s)",
            (code, owner, expires_at, used_at, redeemer if used_at else None),
        )
    for user, window_start, locked_until in (
        (locked, ago(hours=3), NOW + timedelta(minutes=5)),  # still locked out
        (failing, ago(minutes=5), None),  # failures still counting
        (stale, ago(hours=3), ago(hours=2)),  # lock-out over, window over
    ):
        conn.execute(
            "INSERT INTO link_code_failures (user_id, window_start, failures, locked_until)"
            " VALUES (%s, %s, 3, %s)",
            (user, window_start, locked_until),
        )
    settings = link_code_expiry.Settings(batch_size=1, retention_seconds=3600)
    result = link_code_expiry.run(conn, settings, NOW)
    assert result.rows == 3
    assert result.details == {"codes": 2, "lockouts": 1}
    assert {r[0] for r in rows(conn, "SELECT code FROM link_codes")} == {
        code for code, (_, _, kept) in codes.items() if kept
    }
    assert {r[0] for r in rows(conn, "SELECT user_id FROM link_code_failures")} == {
        locked,
        failing,
    }


def test_link_code_expiry_keeps_failures_for_the_stores_window(conn: Conn) -> None:
    """The failure window is the store's setting (one owner): the job reads it from there."""
    user = make_user(conn)
    conn.execute(
        "INSERT INTO link_code_failures (user_id, window_start, failures) VALUES (%s, %s, 3)",
        (user, ago(minutes=30)),
    )
    settings = link_code_expiry.Settings()
    an_hour = StoreConfig(link_failure_window=timedelta(hours=1))
    assert link_code_expiry.run(conn, settings, NOW, store=an_hour).details["lockouts"] == 0
    # The store's default window (10 minutes) ended 20 minutes ago.
    assert link_code_expiry.run(conn, settings, NOW).details["lockouts"] == 1


def test_link_code_expiry_keeps_failures_the_daily_cap_still_counts(conn: Conn) -> None:
    """Window and lock-out over, but a failure of the last 24 hours: the row stays until it is
    a day old (the daily cap, link_max_daily_failures, counts it)."""
    user = make_user(conn)
    conn.execute(
        "INSERT INTO link_code_failures (user_id, window_start, failures, locked_until, recent)"
        " VALUES (%s, %s, 0, %s, ARRAY[%s]::timestamptz[])",
        (user, ago(hours=3), ago(hours=2), ago(hours=3)),
    )
    settings = link_code_expiry.Settings()
    assert link_code_expiry.run(conn, settings, NOW).details["lockouts"] == 0
    a_day_later = NOW + timedelta(hours=21, seconds=1)
    assert link_code_expiry.run(conn, settings, a_day_later).details["lockouts"] == 1


# -- session_archival --------------------------------------------------------------------------


def make_session(conn: Conn, user: uuid.UUID, last_active: datetime, messages: int) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO sessions (user_id, created_at, last_active, next_seq)"
        " VALUES (%s, %s, %s, %s) RETURNING session_id",
        (user, last_active - timedelta(hours=1), last_active, messages),
    ).fetchone()
    assert row is not None
    for seq in range(messages):
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (row[0], seq, ("user", "assistant")[seq % 2], f"message {seq}", last_active),
        )
    return uuid.UUID(str(row[0]))


SESSION_COLUMNS = "session_id, user_id, created_at, last_active, next_seq"
MESSAGE_COLUMNS = "session_id, seq, role, content, created_at"


def test_session_archival_moves_idle_sessions_with_all_messages(conn: Conn) -> None:
    user = make_user(conn)
    idle = [make_session(conn, user, ago(days=40), 5), make_session(conn, user, ago(days=31), 0)]
    active = make_session(conn, user, ago(days=2), 3)
    before_sessions = rows(conn, f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY session_id")
    before_messages = rows(conn, f"SELECT {MESSAGE_COLUMNS} FROM session_messages ORDER BY 1, 2")

    settings = session_archival.Settings(batch_size=1, idle_seconds=30 * 86400)
    result = session_archival.run(conn, settings, NOW)

    assert result.rows == 2
    assert result.details == {"archived": 2, "messages": 5, "purged": 0}
    assert rows(conn, "SELECT session_id FROM sessions") == [(active,)]
    archived = rows(conn, f"SELECT {SESSION_COLUMNS} FROM archived_sessions ORDER BY session_id")
    assert archived == [s for s in before_sessions if s[0] in idle]
    archived_messages = rows(
        conn, f"SELECT {MESSAGE_COLUMNS} FROM archived_session_messages ORDER BY 1, 2"
    )
    assert archived_messages == [m for m in before_messages if m[0] in idle]
    assert {r[0] for r in rows(conn, "SELECT archived_at FROM archived_sessions")} == {NOW}

    # Running again finds nothing more to do.
    assert session_archival.run(conn, settings, NOW).rows == 0


def test_restore_brings_an_archived_session_back(conn: Conn) -> None:
    user = make_user(conn)
    session = make_session(conn, user, ago(days=40), 4)
    messages = rows(conn, f"SELECT {MESSAGE_COLUMNS} FROM session_messages ORDER BY seq")
    session_archival.run(conn, session_archival.Settings(), NOW)
    assert rows(conn, "SELECT count(*) FROM sessions") == [(0,)]

    assert session_archival.restore(conn, session, NOW) == 4
    # It keeps its last activity: restoring does not make it the user's current session.
    assert rows(conn, "SELECT session_id, last_active, next_seq, restored_at FROM sessions") == [
        (session, ago(days=40), 4, NOW)
    ]
    assert rows(conn, f"SELECT {MESSAGE_COLUMNS} FROM session_messages ORDER BY seq") == messages
    # The restore writes the session's user itself (revision 0014), not through the trigger.
    assert "user_id" in QUERIES["restore_session_messages"]
    assert rows(conn, "SELECT DISTINCT user_id FROM session_messages") == [(user,)]
    assert rows(conn, "SELECT count(*) FROM archived_sessions") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM archived_session_messages") == [(0,)]
    with pytest.raises(NotFound):
        session_archival.restore(conn, session, NOW)
    with pytest.raises(NotFound):
        session_archival.restore(conn, uuid.uuid4(), NOW)


def test_session_archival_pauses_in_proportion_to_each_batch(conn: Conn) -> None:
    user = make_user(conn)
    for _ in range(3):
        conn.execute(
            "INSERT INTO sessions (user_id, last_active) VALUES (%s, %s)", (user, ago(days=60))
        )
    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        return False

    settings = session_archival.Settings(batch_size=1, pause_ratio=2.0, pause_seconds=0)
    assert session_archival.run(conn, settings, NOW, pause).rows == 3
    # One pause after each full batch, twice as long as the batch took (measured: above 0).
    assert len(pauses) == 3 and all(seconds > 0 for seconds in pauses)


def test_a_restored_session_stays_online_for_idle_seconds_after_restoring(conn: Conn) -> None:
    user = make_user(conn)
    session = make_session(conn, user, ago(days=40), 2)
    settings = session_archival.Settings(idle_seconds=30 * 86400)
    session_archival.run(conn, settings, ago(days=1))
    session_archival.restore(conn, session, ago(days=1))
    assert session_archival.run(conn, settings, NOW).rows == 0
    gauges = conn.execute(QUERIES["domain_gauges"], {"now": NOW, "idle_seconds": 30 * 86400})
    assert gauges.fetchone()[-2:] == (0, 0)  # type: ignore[index]
    assert session_archival.run(conn, settings, NOW + timedelta(days=30)).rows == 1


def test_restore_can_make_the_session_current(conn: Conn) -> None:
    """The user's current session is its most recently active one (begin_turn continues it)."""
    user = make_user(conn)
    old = make_session(conn, user, ago(days=40), 2)
    session_archival.run(conn, session_archival.Settings(), NOW)
    recent = make_session(conn, user, ago(minutes=5), 2)
    session_archival.restore(conn, old, NOW, make_current=True)
    current = rows(
        conn, "SELECT session_id FROM sessions WHERE user_id = %s ORDER BY last_active DESC", user
    )
    assert [r[0] for r in current] == [old, recent]


def test_session_archival_purges_old_archives_only_when_configured(conn: Conn) -> None:
    user = make_user(conn)
    make_session(conn, user, ago(days=100), 2)
    session_archival.run(conn, session_archival.Settings(), ago(days=60))
    make_session(conn, user, ago(days=40), 2)
    session_archival.run(conn, session_archival.Settings(), NOW)
    assert rows(conn, "SELECT count(*) FROM archived_sessions") == [(2,)]

    purge = session_archival.Settings(purge_after_seconds=30 * 86400)
    result = session_archival.run(conn, purge, NOW)
    assert result.details == {"archived": 0, "messages": 0, "purged": 1}
    assert rows(conn, "SELECT archived_at FROM archived_sessions") == [(NOW,)]
    assert rows(conn, "SELECT count(*) FROM archived_session_messages") == [(2,)]


def domain_gauges(conn: Conn, idle_seconds: int) -> dict[str, Any]:
    """The daemon's domain gauges, counted with session_archival's ``idle_seconds`` at NOW."""
    cursor = conn.execute(QUERIES["domain_gauges"], {"now": NOW, "idle_seconds": idle_seconds})
    row = cursor.fetchone()
    assert row is not None and cursor.description is not None
    return dict(zip([c.name for c in cursor.description], row, strict=True))


def test_archival_backlog_gauges_count_what_the_job_would_archive(conn: Conn) -> None:
    empty = domain_gauges(conn, 30 * 86400)
    assert (empty["sessions_archivable"], empty["sessions_archivable_age_seconds"]) == (0, 0)
    user = make_user(conn)
    for days in (40, 31, 2):
        make_session(conn, user, ago(days=days), 1)

    gauges = domain_gauges(conn, 30 * 86400)
    assert gauges["sessions_active"] == 3
    assert gauges["sessions_archivable"] == 2
    # The oldest became archivable 10 days ago (idle for 40 days, archived after 30).
    assert gauges["sessions_archivable_age_seconds"] == 10 * 86400
    # The job's setting decides: after 35 days only the oldest counts, after 50 none.
    assert domain_gauges(conn, 35 * 86400)["sessions_archivable"] == 1
    assert domain_gauges(conn, 50 * 86400)["sessions_archivable_age_seconds"] == 0

    session_archival.run(conn, session_archival.Settings(idle_seconds=30 * 86400), NOW)
    after = domain_gauges(conn, 30 * 86400)
    assert (after["sessions_archivable"], after["sessions_archivable_age_seconds"]) == (0, 0)
    assert after["sessions_archived"] == 2


def test_archival_backlog_gauges_read_an_index_range_not_the_table(conn: Conn) -> None:
    """On 20 000 sessions, 1% of them idle: PostgreSQL's plan for the backlog figures."""
    user = make_user(conn)
    conn.execute(
        "INSERT INTO sessions (user_id, created_at, last_active, next_seq)"
        " SELECT %s, t, t, 0 FROM ("
        "   SELECT %s - make_interval(hours => g) AS t FROM generate_series(0, 19999) g"
        " ) s",
        (user, NOW),
    )
    conn.execute("ANALYZE sessions")
    plan = conn.execute(
        f"EXPLAIN (FORMAT JSON) {QUERIES['domain_gauges']}",
        {"now": NOW, "idle_seconds": 19800 * 3600},
    ).fetchone()
    assert plan is not None
    backlog = [
        node
        for node in walk(plan[0][0]["Plan"])
        if node.get("Index Cond", "").startswith("(last_active <")
    ]
    assert backlog, plan
    assert all(node["Index Name"] == "ix_sessions_last_active" for node in backlog)
    scans = [node for node in walk(plan[0][0]["Plan"]) if node.get("Relation Name") == "sessions"]
    # Three reads of sessions: the total (any plan), the backlog's range, the oldest entry.
    assert len(scans) == 3
    assert sum(node["Node Type"] == "Seq Scan" for node in scans) <= 1, plan


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


# -- proactive_reload --------------------------------------------------------------------------


def test_proactive_reload_publishes_what_the_store_would_load(conn: Conn) -> None:
    registered = [make_user(conn) for _ in range(2)]
    implicit = make_user(conn)  # Telegram, no registered chat: its chat is its user id
    whatsapp = make_user(conn, channel="whatsapp")  # registered a chat explicitly
    unregistered_whatsapp = make_user(conn, channel="whatsapp")
    unauthenticated = make_user(conn, authenticated=False)
    for i, user in enumerate([*registered, whatsapp, unauthenticated]):
        conn.execute(
            "INSERT INTO proactive_users (user_id, chat_id) VALUES (%s, %s)", (user, f"chat{i}")
        )
    # A stale entry and an entry whose chat id changed since the last reload.
    conn.execute(
        "INSERT INTO proactive_user_list (user_id, chat_id) VALUES (%s, 'old'), (%s, 'x')",
        (registered[0], unauthenticated),
    )

    settings = proactive_reload.Settings(batch_size=1)
    result = proactive_reload.run(conn, settings, NOW)

    assert result.rows == 4
    # The first publication: version 1, announced to the bots (store.ProactiveUsers).
    assert result.details == {"size": 4, "written": 4, "removed": 1, "version": 1}
    listed = dict(rows(conn, "SELECT user_id, chat_id FROM proactive_user_list"))
    (implicit_chat,) = rows(conn, "SELECT channel_user_id FROM users WHERE user_id = %s", implicit)
    assert listed == {
        registered[0]: "chat0",
        registered[1]: "chat1",
        whatsapp: "chat2",
        implicit: implicit_chat[0],
    }
    assert unregistered_whatsapp not in listed
    # Unchanged rows are not rewritten, and an unchanged list keeps its version.
    again = proactive_reload.run(conn, settings, NOW + timedelta(minutes=1))
    assert again.details == {"size": 4, "written": 0, "removed": 0, "version": 1}


def test_proactive_reload_and_the_store_read_one_definition(database_url: str, conn: Conn) -> None:
    # Both read sk_proactive_candidates: for any channel the job's list is the store's list.
    for channel in ("telegram", "whatsapp", "signal"):
        for _ in range(2):
            make_user(conn, channel=channel)
        conn.execute(
            "INSERT INTO proactive_users (user_id, chat_id) VALUES (%s, 'registered')",
            (make_user(conn, channel=channel),),
        )
    make_user(conn, channel="whatsapp", authenticated=False)
    with Store(database_url, max_size=1, proactive_channel="whatsapp") as store:
        expected = {(u.user_id, u.chat_id) for u in store.load_users_from_db()}
        settings = proactive_reload.Settings(batch_size=2)
        proactive_reload.run(conn, settings, NOW, store=store.config)
    listed = set(rows(conn, "SELECT user_id, chat_id FROM proactive_user_list"))
    assert len(expected) == 5  # two of whatsapp, three registered
    assert listed == expected


# -- usage_rollup ------------------------------------------------------------------------------


def track(conn: Conn, user: uuid.UUID, channel: str, at: datetime, tokens: int) -> None:
    conn.execute(
        "INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, cached_tokens,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
        (user, channel, tokens, 2 * tokens, 3 * tokens, at),
    )


def daily(conn: Conn) -> list[tuple[Any, ...]]:
    return rows(
        conn,
        "SELECT day, channel, requests, input_tokens, output_tokens, cached_tokens"
        " FROM usage_daily ORDER BY day, channel",
    )


def test_usage_rollup_is_idempotent_and_counts_late_rows(conn: Conn) -> None:
    user = make_user(conn)
    yesterday, today = ago(days=1).date(), NOW.date()
    track(conn, user, "telegram", ago(days=1), 10)
    track(conn, user, "telegram", ago(days=1, minutes=5), 1)
    track(conn, user, "telegram", ago(minutes=5), 100)
    track(conn, user, "whatsapp", ago(minutes=1), 7)

    settings = usage_rollup.Settings(batch_size=2)
    assert usage_rollup.run(conn, settings, NOW).rows == 4
    expected = [
        (yesterday, "telegram", 2, 11, 22, 33),
        (today, "telegram", 1, 100, 200, 300),
        (today, "whatsapp", 1, 7, 14, 21),
    ]
    assert daily(conn) == expected

    # Twice never double counts.
    assert usage_rollup.run(conn, settings, NOW).rows == 0
    assert daily(conn) == expected

    # A row for yesterday that arrives late is still counted.
    track(conn, user, "telegram", ago(days=1, minutes=1), 1000)
    assert usage_rollup.run(conn, settings, NOW).rows == 1
    assert daily(conn)[0] == (yesterday, "telegram", 3, 1011, 2022, 3033)


def rolled_up(conn: Conn) -> int:
    """Requests in the daily totals: raw rows counted so far."""
    return int(rows(conn, "SELECT coalesce(sum(requests), 0) FROM usage_daily")[0][0])


def test_usage_rollup_prunes_only_counted_old_rows(conn: Conn) -> None:
    # Ten-day partitions: [01-27, 02-06) ended before the 30 days kept, and is dropped whole.
    daily_partitions(conn, ago(days=40), 5, usage_stats_interval_seconds=10 * 86400)
    user = make_user(conn)
    track(conn, user, "telegram", ago(days=40), 1)
    track(conn, user, "telegram", ago(days=1), 2)
    settings = usage_rollup.Settings(prune_after_seconds=30 * 86400)
    result = usage_rollup.run(conn, settings, NOW)
    assert result.details == {
        "rolled_up": 2,
        "pruned": 1,
        "partitions_dropped": 1,
        "partitions_kept": 0,
    }
    assert rows(conn, "SELECT input_tokens FROM usage_stats") == [(2,)]
    assert [r[2] for r in daily(conn)] == [1, 1]


# -- the runner: lock, slot, ledger ------------------------------------------------------------


def connector(url: str) -> Any:
    def connect() -> AbstractContextManager[Conn]:
        return psycopg.connect(url, autocommit=True)

    return connect


def ledger(conn: Conn) -> list[tuple[Any, ...]]:
    return rows(
        conn, "SELECT job, replica_id, outcome, rows, error, details FROM job_runs ORDER BY run_id"
    )


def cleaned(rows: int) -> dict[str, int]:
    """rate_limit_cleanup's details: ``rows`` from one dropped partition (none when 0)."""
    return {"deleted": rows, "partitions_dropped": min(rows, 1), "partitions_deferred": 0}


def test_runner_records_each_run_and_uses_frozen_time(database_url: str, conn: Conn) -> None:
    daily_partitions(conn, datetime(2025, 12, 30, 12, tzinfo=UTC), 1)
    user = make_user(conn)
    conn.execute(
        "INSERT INTO rate_limits (user_id, window_seconds, window_start) VALUES (%s, 60, %s)",
        (user, datetime(2025, 12, 30, 11, 58, tzinfo=UTC)),
    )
    settings = rate_limit_cleanup.Settings()
    # The day of 12-30 ends, and every window of it a day later (2026-01-01 00:00).
    with freeze_time("2025-12-31 23:59:30"):
        first = run_job(connector(database_url), "rate_limit_cleanup", settings, replica_id="r1")
    with freeze_time("2026-01-01 00:00:00"):
        second = run_job(
            connector(database_url), "rate_limit_cleanup", settings, replica_id="r1", slot=SLOT
        )
    assert (first.outcome, first.rows, second.outcome, second.rows) == ("success", 0, "success", 1)
    assert ledger(conn) == [
        ("rate_limit_cleanup", "r1", "success", 0, None, {"trigger": "manual", **cleaned(0)}),
        ("rate_limit_cleanup", "r1", "success", 1, None, {"slot": SLOT, **cleaned(1)}),
    ]
    finished = rows(conn, "SELECT bool_and(finished_at >= started_at) FROM job_runs")
    assert finished == [(True,)]


def test_a_slot_runs_once_and_a_held_lock_skips(database_url: str, conn: Conn) -> None:
    settings = usage_rollup.Settings()
    connect = connector(database_url)
    assert (
        run_job(connect, "usage_rollup", settings, replica_id="a", slot=SLOT).outcome == "success"
    )
    again = run_job(connect, "usage_rollup", settings, replica_id="b", slot=SLOT)
    assert (again.outcome, again.error) == ("skipped", "another replica already ran this slot")

    with psycopg.connect(database_url, autocommit=True) as holder:
        with locking.job_lock(holder, "usage_rollup") as taken:
            assert taken
            held = run_job(connect, "usage_rollup", settings, replica_id="b", slot=NEXT_SLOT)
        assert (held.outcome, held.error) == ("skipped", "another replica holds the job's lock")
    assert run_job(connect, "usage_rollup", settings, replica_id="b", slot=NEXT_SLOT).outcome == (
        "success"
    )
    assert [(r[1], r[2]) for r in ledger(conn)] == [
        ("a", "success"),
        ("b", "skipped"),
        ("b", "skipped"),
        ("b", "success"),
    ]


def test_a_killed_holder_releases_the_lock(database_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, psycopg; from jobs import locking\n"
            f"c = psycopg.connect({database_url!r}, autocommit=True)\n"
            "with locking.job_lock(c, 'proactive_reload') as taken:\n"
            "    print(taken, flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        settings = proactive_reload.Settings()
        connect = connector(database_url)
        assert run_job(connect, "proactive_reload", settings, replica_id="x").outcome == "skipped"
        holder.kill()
        holder.wait()
        # The server ends the session as soon as the socket closes; allow it a moment.
        for _ in range(200):
            report = run_job(connect, "proactive_reload", settings, replica_id="x")
            if report.outcome == "success":
                break
        assert report.outcome == "success"
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_run_is_recorded_and_releases_the_lock(database_url: str, conn: Conn) -> None:
    conn.execute("ALTER TABLE usage_daily RENAME TO usage_daily_moved")
    user = make_user(conn)
    track(conn, user, "telegram", NOW, 1)
    connect = connector(database_url)
    with pytest.raises(JobFailed) as failed:
        run_job(connect, "usage_rollup", usage_rollup.Settings(), replica_id="a", slot=SLOT)
    report = failed.value.report
    assert report.outcome == "failure" and report.run_id is not None
    assert report.error is not None and report.error.startswith("UndefinedTable")
    assert [(r[2], r[4]) for r in ledger(conn)] == [("failure", report.error)]
    # Nothing half-done: the batch rolled back, the watermark did not move.
    assert rows(conn, "SELECT watermark FROM usage_rollup_state") == [(0,)]

    conn.execute("ALTER TABLE usage_daily_moved RENAME TO usage_daily")
    retry = run_job(connect, "usage_rollup", usage_rollup.Settings(), replica_id="b", slot=SLOT)
    assert (retry.outcome, retry.rows) == ("success", 1)


def test_a_run_failing_after_committed_batches_records_their_rows(
    database_url: str, conn: Conn
) -> None:
    user = make_user(conn)
    for minutes in range(5):
        track(conn, user, "telegram", ago(minutes=minutes), 1)

    def pause(seconds: float) -> bool:  # after the first batch, the next one cannot write
        conn.execute("ALTER TABLE IF EXISTS usage_daily RENAME TO usage_daily_moved")
        return False

    settings = usage_rollup.Settings(batch_size=2)
    with pytest.raises(JobFailed) as failed:
        run_job(connector(database_url), "usage_rollup", settings, replica_id="a", pause=pause)
    report = failed.value.report
    assert (report.outcome, report.rows) == ("failure", 2)
    assert [(r[2], r[3]) for r in ledger(conn)] == [("failure", 2)]
    metrics = DaemonMetrics(JOB_NAMES)
    metrics.observe(report)
    rows_total = metrics.registry.get_sample_value(
        "sessionkeeper_job_rows_total", {"job": "usage_rollup", "job_name": "usage_rollup"}
    )
    assert rows_total == 2


def test_a_run_left_running_is_marked_failed_by_the_next(database_url: str, conn: Conn) -> None:
    conn.execute(
        "INSERT INTO job_runs (job, replica_id, outcome) VALUES ('usage_rollup', 'gone', 'running')"
    )
    run_job(connector(database_url), "usage_rollup", usage_rollup.Settings(), replica_id="a")
    outcomes = [(r[1], r[2]) for r in ledger(conn)]
    assert outcomes == [("gone", "failure"), ("a", "success")]
    assert ledger(conn)[0][4].startswith("interrupted")


def test_a_stop_request_ends_the_run_between_batches(database_url: str, conn: Conn) -> None:
    user = make_user(conn)
    for minutes in range(5):
        track(conn, user, "telegram", ago(minutes=minutes), 1)
    report = run_job(
        connector(database_url),
        "usage_rollup",
        usage_rollup.Settings(batch_size=2),
        replica_id="a",
        pause=lambda seconds: True,
    )
    assert (report.outcome, report.rows, report.details["stopped"]) == ("stopped", 2, True)
    assert rolled_up(conn) == 2


# Rows to roll up in batches of 2 -> rows rolled up (committed) at each pause: n batches make
# n - 1 pauses, none after the last, short batch (an empty one when the rows fill every batch).
@pytest.mark.parametrize(
    ("pending", "done_at_pauses"), [(1, []), (2, [2]), (4, [2, 4]), (5, [2, 4])]
)
def test_the_loop_pauses_between_batches_outside_their_transactions(
    database_url: str, conn: Conn, pending: int, done_at_pauses: list[int]
) -> None:
    user = make_user(conn)
    for minutes in range(pending):
        track(conn, user, "telegram", ago(minutes=minutes), 1)
    pauses: list[tuple[float, int, psycopg.pq.TransactionStatus]] = []
    with psycopg.connect(database_url, autocommit=True) as job_conn:

        def pause(seconds: float) -> bool:
            # Another session sees the batch committed; the job's session has no transaction.
            done = rolled_up(conn)
            pauses.append((seconds, done, job_conn.info.transaction_status))
            return False

        settings = usage_rollup.Settings(batch_size=2, pause_seconds=0.25)
        result = usage_rollup.run(job_conn, settings, NOW, pause)
    assert (result.rows, result.stopped) == (pending, False)
    idle = psycopg.pq.TransactionStatus.IDLE
    assert pauses == [(0.25, done, idle) for done in done_at_pauses]


def test_a_stop_request_during_a_pause_ends_the_run_without_waiting_it_out(
    database_url: str, conn: Conn
) -> None:
    user = make_user(conn)
    for minutes in range(5):
        track(conn, user, "telegram", ago(minutes=minutes), 1)
    stop, pausing = threading.Event(), threading.Event()

    def pause(seconds: float) -> bool:  # the daemon's pause is its stop event's wait
        pausing.set()
        return stop.wait(seconds)

    reports = []
    settings = usage_rollup.Settings(batch_size=2, pause_seconds=3600)
    job = threading.Thread(
        target=lambda: reports.append(
            run_job(connector(database_url), "usage_rollup", settings, replica_id="a", pause=pause)
        )
    )
    job.start()
    assert pausing.wait(60), "the run never paused"
    stop.set()
    job.join(60)  # a bound, not a timing: the pause is an hour long
    assert not job.is_alive(), "the run waited out its pause"
    [report] = reports
    assert (report.outcome, report.rows, report.details["stopped"]) == ("stopped", 2, True)
    assert [(r[2], r[3], r[5]["stopped"]) for r in ledger(conn)] == [("stopped", 2, True)]
    assert rolled_up(conn) == 2


@pytest.fixture
def frozen() -> Iterator[None]:
    with freeze_time(NOW):
        yield


def test_link_code_expiry_under_frozen_clock(database_url: str, conn: Conn, frozen: None) -> None:
    user = make_user(conn)
    conn.execute(
        "INSERT INTO link_codes (code, user_id, expires_at) VALUES ('1', %s, %s), ('2', %s, %s)",
        (user, ago(hours=2), user, ago(minutes=1)),
    )
    report = run_job(
        connector(database_url), "link_code_expiry", link_code_expiry.Settings(), replica_id="a"
    )
    assert report.rows == 1
    assert rows(conn, "SELECT code FROM link_codes") == [("2",)]
