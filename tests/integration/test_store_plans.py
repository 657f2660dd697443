"""The history statements touch an index range of one session, never the whole table: the
plans PostgreSQL chooses for them on a table holding many sessions' histories."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from store.queries import QUERIES

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


def test_finish_turn_statement_reads_no_other_history(
    conn: psycopg.Connection[Any], busy: uuid.UUID
) -> None:
    params: dict[str, object] = {
        "session_id": busy,
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
    text = plan(conn, "append_messages", params)
    # (The planner may scan the small sessions table; the history is what grows.)
    assert "Seq Scan on session_messages" not in text
    assert "pk_session_messages" in text
    # The receipts of earlier turns are found (and expired) by the session's key range.
    assert "Seq Scan on turn_receipts" not in text
    assert "pk_turn_receipts" in text
