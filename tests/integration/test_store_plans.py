"""The history statements touch an index range of one session, never the whole table: the
plans PostgreSQL chooses for them on a table holding many sessions' histories."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from partition_support import drop_calendar

from sessionkeeper.jobs import partition_maintenance
from store.queries import QUERIES

DAY = timedelta(days=1)
SESSIONS = 300
MESSAGES_EACH = 100


@pytest.fixture
def busy(conn: psycopg.Connection[Any]) -> uuid.UUID:
    """A database with 30 000 messages (and 15 000 turn receipts) over 300 sessions; returns
    one session's id."""
    conn.execute(
        "INSERT INTO users (channel, channel_user_id)"
        " SELECT 'telegram', g::text FROM generate_series(1, %(n)s) g",
        {"n": SESSIONS},
    )
    conn.execute(
        "INSERT INTO sessions (user_id, next_seq) SELECT user_id, %(m)s FROM users",
        {"m": MESSAGES_EACH},
    )
    conn.execute(
        "INSERT INTO session_messages (session_id, seq, role, content)"
        " SELECT s.session_id, g, 'user', repeat('x', 200)"
        " FROM sessions s, generate_series(0, %(m)s - 1) g",
        {"m": MESSAGES_EACH},
    )
    # A receipt per finished turn (one per pair), as finish_turn leaves them.
    conn.execute(
        "INSERT INTO turn_receipts (session_id, turn_id, appended, trimmed, next_seq)"
        " SELECT s.session_id, gen_random_uuid(), 2, 0, g"
        " FROM sessions s, generate_series(2, %(m)s, 2) g",
        {"m": MESSAGES_EACH},
    )
    conn.execute("ANALYZE")
    row = conn.execute("SELECT session_id FROM sessions LIMIT 1").fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def plan(conn: psycopg.Connection[Any], name: str, params: dict[str, object]) -> str:
    rows = conn.execute(f"EXPLAIN {QUERIES[name]}", params).fetchall()
    return "\n".join(row[0] for row in rows)


def test_trim_deletes_an_index_range(conn: psycopg.Connection[Any], busy: uuid.UUID) -> None:
    text = plan(conn, "trim_session_history", {"session_id": busy, "keep": 40})
    assert "Seq Scan on session_messages" not in text
    assert "pk_session_messages" in text


@pytest.mark.parametrize("statement", ["append_messages", "append_messages_by_session"])
def test_finish_turn_statement_reads_no_other_history(
    conn: psycopg.Connection[Any], busy: uuid.UUID, statement: str
) -> None:
    owner = conn.execute("SELECT user_id FROM sessions WHERE session_id = %s", (busy,))
    params: dict[str, object] = {
        "session_id": busy,
        "user_id": owner.fetchone()[0],  # type: ignore[index]
        "roles": ["user", "assistant"],
        "contents": ["q", "a"],
        "created": [None, None],
        "extras": [None, None],
        "now": None,
        "keep": 40,
        "track_usage": True,
        "input_tokens": 1,
        "output_tokens": 1,
        "cached_tokens": 0,
        "turn_id": uuid.uuid4(),
    }
    text = plan(conn, statement, params)
    # (The planner may scan the small sessions table; the history is what grows.)
    assert "Seq Scan on session_messages" not in text
    assert "pk_session_messages" in text
    # The user_id filters (revision 0014) are checked on the rows the key range found.
    assert re.search(r"Filter: .*user_id = ", text)
    # The receipts of earlier turns are found (and expired) by the session's key range.
    assert "Seq Scan on turn_receipts" not in text
    assert "pk_turn_receipts" in text


def test_begin_turns_history_read_is_the_sessions_key_range(
    conn: psycopg.Connection[Any], busy: uuid.UUID
) -> None:
    # sk_history_arrays_v3 names the user too (revision 0014): a filter on the rows of the
    # session's key range, read newest first. Without revision 0014's statistics (session_id
    # determines user_id) the planner multiplies the two equalities' selectivities, expects one
    # row, and reads and sorts the whole session instead.
    owner = conn.execute("SELECT user_id FROM sessions WHERE session_id = %s", (busy,)).fetchone()
    assert owner is not None
    # The generic plan, as begin_turn runs it (plan_cache_mode = force_generic_plan).
    conn.execute("PREPARE h(uuid, uuid) AS SELECT * FROM sk_history_arrays_v3($1, $2, 20)")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    rows = conn.execute(f"EXPLAIN EXECUTE h('{owner[0]}', '{busy}')").fetchall()
    text = "\n".join(row[0] for row in rows)
    assert "Index Scan Backward using pk_session_messages" in text
    assert re.search(r"Filter: \(user_id = ", text)
    assert "Seq Scan" not in text and "Bitmap" not in text


# -- time partitions (revision 0013) -----------------------------------------------------------

TODAY = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
PARTITION = re.compile(r"\b(?:rate_limits|usage_stats)_(?:p\d{8}_\d{4}|default|legacy)\b")
AUTO_EXPLAIN = {
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_timing": "off",
    "auto_explain.log_level": "notice",
}


def explained(conn: psycopg.Connection[Any]) -> list[str]:
    """Plans of every statement ``conn`` runs from now on, nested ones (inside the sk_*
    functions) included, as they ran (auto_explain, sent to the client as notices)."""
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for name, value in AUTO_EXPLAIN.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return plans


@pytest.mark.parametrize("caps", [[15], [15, 100, 1000]])
def test_the_hot_path_touches_one_partition_of_each_table(
    conn: psycopg.Connection[Any], caps: list[int]
) -> None:
    # Daily partitions for the days around now (instead of the test calendar's), each holding
    # rows.
    drop_calendar(conn)
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=6), TODAY - 3 * DAY)
    conn.execute(
        "INSERT INTO users (channel, channel_user_id) SELECT 'telegram', 'u' || g"
        " FROM generate_series(1, 50) g"
    )
    for days in range(-3, 4):
        at = {"at": TODAY + days * DAY}
        conn.execute(
            "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
            " SELECT user_id, 60, %(at)s, 1 FROM users",
            at,
        )
        conn.execute(
            "INSERT INTO usage_stats (user_id, channel, created_at)"
            " SELECT user_id, 'telegram', %(at)s FROM users",
            at,
        )
    conn.execute("ANALYZE")
    windows = [60, 3600, 86400][: len(caps)]
    plans = explained(conn)
    for _ in range(7):  # past psycopg's and PL/pgSQL's first, custom plans
        begun = conn.execute(
            "SELECT session_id, user_id FROM sk_begin_turn('telegram', 'u1', NULL, %s, %s, %s,"
            " false,"
            " '30 minutes', 0, 20)",
            (TODAY, windows, caps),
        ).fetchone()
        assert begun is not None
        conn.execute(
            QUERIES["append_messages"],
            {
                "session_id": begun[0],
                "user_id": begun[1],
                "roles": ["user", "assistant"],
                "contents": ["q", "a"],
                "created": [None, None],
                "extras": [None, None],
                "now": TODAY,
                "keep": 40,
                "track_usage": True,
                "input_tokens": 1,
                "output_tokens": 1,
                "cached_tokens": 0,
                "turn_id": uuid.uuid4(),
            },
        )
    touching = [plan for plan in plans if "rate_limits" in plan or "usage_stats" in plan]
    assert touching, "auto_explain logged no plan"
    named = {name for plan in touching for name in PARTITION.findall(plan)}
    # Only today's partitions appear: no plan reads or updates another partition.
    assert named <= {"rate_limits_p20260310_0000", "usage_stats_p20260310_0000"}
    if len(caps) > 1:  # the UPDATE of several windows prunes at executor start-up
        assert any("Subplans Removed" in plan for plan in touching)
