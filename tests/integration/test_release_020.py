"""Bots and daemons of release 0.2.0 keep working beside 0.3.0's conversations.

Release 0.2.0's statements (tests/fixtures/release-0.2.0/, verbatim) run against a database
at head where a 0.3.0 bot has already opened group conversations: the old bot's turns stay in
the user's private conversation (as they always were), never in a group's, and an old daemon
archiving and restoring sessions keeps each session's chat (revision 0016's triggers). Every
statement of 0.2.0's store and aiogram integration runs here; of its jobs, the archive's and
the restore's (the ones conversations changed underneath). test_previous_release.py still runs
every statement of 0.1.0.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from release_support import release_statements
from store_support import T0

from store import Store

STORE = release_statements("0.2.0", "store_queries.sql")
JOBS = release_statements("0.2.0", "jobs_queries.sql")
GROUP = "-100123"
IDLE = timedelta(minutes=30)


@pytest.fixture
def old(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def old_begin_turn(
    conn: psycopg.Connection[dict[str, Any]] | psycopg.Cursor[dict[str, Any]],
    now: Any,
    caps: list[int] | None = None,
    user: str = "42",
) -> dict[str, Any]:
    """Release 0.2.0's begin_turn (other tests upgrading under 0.2.0 bots use it too)."""
    row = conn.execute(
        STORE["begin_turn"],
        {
            "channel": "telegram",
            "channel_user_id": user,
            "display_name": None,
            "now": now,
            "windows": [60],
            "caps": caps or [15],
            "durable": False,
            "idle": IDLE,
            "carry_pairs": 2,
            "history_pairs": 20,
        },
    ).fetchone()
    assert row is not None
    return row


def old_finish_turn(
    conn: psycopg.Connection[dict[str, Any]] | psycopg.Cursor[dict[str, Any]],
    row: dict[str, Any],
    now: Any,
) -> None:
    conn.execute(
        STORE["append_messages"],
        {
            "session_id": row["session_id"],
            "user_id": row["user_id"],
            "roles": ["user", "assistant"],
            "contents": ["old bot", "old reply"],
            "created": [now, now],
            "extras": ["", ""],
            "now": now,
            "keep": 40,
            "track_usage": True,
            "input_tokens": 1,
            "output_tokens": 1,
            "cached_tokens": 0,
            "turn_id": uuid.uuid4(),
        },
    )


def test_a_bot_of_020_stays_in_the_private_conversation(
    database_url: str, old: psycopg.Connection[dict[str, Any]]
) -> None:
    with Store(database_url, max_size=2) as new:
        group = new.begin_turn("telegram", 42, chat=GROUP, now=T0)
        new.finish_turn(group, "in group", "group reply", now=T0)
        private = new.begin_turn("telegram", 42, now=T0)
        new.finish_turn(private, "in private", "private reply", now=T0)

        later = T0 + timedelta(minutes=1)
        row = old_begin_turn(old, later)
        assert row["session_id"] == private.session_id
        assert row["history_contents"] == ["in private", "private reply"]
        old_finish_turn(old, row, later)
        history = old.execute(
            STORE["get_history"], {"session_id": row["session_id"], "history_pairs": 20}
        ).fetchone()
        assert history is not None and history["history_contents"][-1] == "old reply"
        session = old.execute(
            STORE["get_or_create_session"],
            {"user_id": row["user_id"], "now": later, "idle": IDLE, "carry_pairs": 2},
        ).fetchone()
        assert session is not None and session["session_id"] == private.session_id
        # The group conversation is untouched, and a new bot continues both.
        again = new.begin_turn("telegram", 42, chat=GROUP, now=later)
        assert [m.content for m in again.history] == ["in group", "group reply"]
        mine = new.begin_turn("telegram", 42, now=later)
        assert [m.content for m in mine.history][-2:] == ["old bot", "old reply"]

        # A private session that went idle: the old bot opens a new private one, never
        # continuing a group session that was active more lately.
        new.begin_turn("telegram", 42, chat=GROUP, now=later + timedelta(minutes=40))
        renewed = old_begin_turn(old, later + timedelta(minutes=41))
        assert renewed["session_created"] and renewed["session_id"] != again.session_id
        chat = old.execute(
            "SELECT chat_id FROM sessions WHERE session_id = %s", (renewed["session_id"],)
        ).fetchone()
        assert chat == {"chat_id": None}


def test_a_daemon_of_020_keeps_each_sessions_chat_across_the_archive(
    database_url: str, old: psycopg.Connection[dict[str, Any]]
) -> None:
    with Store(database_url, max_size=2) as new:
        group = new.begin_turn("telegram", 42, chat=GROUP, now=T0)
        new.finish_turn(group, "in group", "group reply", now=T0)
        private = new.begin_turn("telegram", 42, now=T0)

    now = T0 + timedelta(days=40)
    with old.transaction():
        chosen = old.execute(
            JOBS["archive_sessions"], {"now": now, "idle_seconds": 86400, "batch_size": 10}
        ).fetchall()
        ids = [r["session_id"] for r in chosen]
        old.execute(JOBS["archive_session_messages"], {"session_ids": ids})
        old.execute(JOBS["archive_delete_sessions"], {"session_ids": ids})
    archived = dict(
        (r["session_id"], r["chat_id"])
        for r in old.execute("SELECT session_id, chat_id FROM archived_sessions")
    )
    assert archived == {group.session_id: GROUP, private.session_id: None}

    params = {"session_id": group.session_id, "now": now, "make_current": True}
    with old.transaction():
        assert old.execute(JOBS["restore_session"], params).fetchone() is not None
        old.execute(JOBS["restore_session_messages"], params)
        old.execute(JOBS["restore_delete_archive"], params)
    restored = old.execute(
        "SELECT chat_id FROM sessions WHERE session_id = %s", (group.session_id,)
    ).fetchone()
    assert restored == {"chat_id": GROUP}
    with Store(database_url, max_size=2) as new:
        back = new.begin_turn("telegram", 42, chat=GROUP, now=now)
        assert back.session_id == group.session_id
        assert new.begin_turn("telegram", 42, now=now).session_id != group.session_id


AIOGRAM = release_statements("0.2.0", "aiogram_queries.sql")


def test_every_store_and_aiogram_statement_of_020_runs_at_head(
    database_url: str, old: psycopg.Connection[dict[str, Any]]
) -> None:
    """Each of 0.2.0's store and aiogram statements, in the order a bot sends them, with what
    that release sends, on a database where 0.3.0 keeps group conversations too."""
    ran: set[str] = set()

    def run(name: str, **params: Any) -> list[dict[str, Any]]:
        ran.add(name)
        queries = AIOGRAM if name.startswith("fsm_") else STORE
        cursor = old.execute(queries[name], params)
        return cursor.fetchall() if cursor.description else []

    with Store(database_url, max_size=2) as new:
        new.finish_turn(new.begin_turn("telegram", 42, chat=GROUP, now=T0), "g", "r", now=T0)
    user = run(
        "get_or_create_user", channel="telegram", channel_user_id="42", display_name="Ada", now=T0
    )[0]["user_id"]
    turn = old_begin_turn(old, T0)
    ran.add("begin_turn")
    assert turn["user_id"] == user and turn["history_contents"] == []
    old_finish_turn(old, turn, T0)
    ran.add("append_messages")
    session = turn["session_id"]
    assert run("trim_session_history", session_id=session, keep=40) == [
        {"session_id": session, "trimmed": 0}
    ]
    history = run("get_history", session_id=session, history_pairs=20)[0]
    assert history["history_contents"] == ["old bot", "old reply"]
    again = run("get_or_create_session", user_id=user, now=T0, idle=IDLE, carry_pairs=2)
    assert again == [{"session_id": session, "session_created": False}]
    rate = {"windows": [60], "caps": [15], "durable": False}
    assert run("check_rate_limit", user_id=user, now=T0, **rate)[0]["allowed"]
    tokens = {"input_tokens": 1, "output_tokens": 2, "cached_tokens": 0}
    run("track_usage", user_id=user, channel="telegram", now=T0, **tokens)
    run("register_proactive_user", chat_id="42", user_id=user, now=T0)
    assert [r["user_id"] for r in run("load_users_from_db", channel="telegram")] == [user]
    assert run("proactive_snapshot", channel="telegram")[0]["user_ids"] == [user]

    other = run(
        "get_or_create_user", channel="whatsapp", channel_user_id="+47", display_name=None, now=T0
    )[0]["user_id"]
    key = "h:" + "0" * 64
    run("create_link_code", code_key=key, now=T0, ttl=timedelta(minutes=10), user_id=user)
    limits = {
        "max_failures": 10,
        "failure_window": timedelta(minutes=10),
        "lockout": timedelta(minutes=15),
    }
    linked = run("redeem_link_code", user_id=other, code_key=key, now=T0, **limits)[0]
    assert linked["outcome"] == "linked"
    assert {r["user_id"] for r in run("get_linked_users", user_id=user)} == {user, other}
    assert run("unlink", user_id=other, now=T0)[0]["person_id"] == linked["person_id"]

    fsm = {
        "bot_id": 1,
        "chat_id": 42,
        "telegram_user_id": 42,
        "thread_id": 0,
        "business_connection_id": "",
        "destiny": "default",
    }
    run("fsm_set_state", channel="telegram", state="Order:size", **fsm)
    run("fsm_set_data", channel="telegram", data=Jsonb({"a": 1}), **fsm)
    run("fsm_update_data", channel="telegram", data=Jsonb({"b": 2}), **fsm)
    assert run("fsm_get", **fsm) == [{"state": "Order:size", "data": {"a": 1, "b": 2}}]
    run("fsm_drop_if_empty", **fsm)

    # An export, as 0.2.0 reads it: one snapshot, a cursor per table.
    run("export_begin")
    run("export_time_zone")
    subject = run("export_subject", user_id=user, person_id=None)[0]
    assert subject["users"] == [user]
    tables = [name for name in STORE if name.startswith("export_") and name not in EXPORT_STEPS]
    exported: dict[str, list[dict[str, Any]]] = {}
    for name in tables:
        run(name, users=subject["users"], persons=subject["persons"])
        exported[name] = run("export_fetch")
        run("export_close")
    run("export_end")
    run("export_abandon")  # after an error, outside a transaction: a warning only
    chats = sorted(str(r["doc"]) for r in exported["export_sessions"])
    assert len(chats) == 2 and any(f'"chat_id":"{GROUP}"' in c for c in chats)

    forgotten = {
        r["table_name"]: r["row_count"] for r in run("forget", user_id=user, person_id=None)
    }
    assert forgotten["sessions"] == 2 and forgotten["session_messages"] == 4
    assert ran == set(STORE) | set(AIOGRAM)


# The export's statements that are not a table's cursor.
EXPORT_STEPS = {
    "export_begin",
    "export_time_zone",
    "export_end",
    "export_abandon",
    "export_subject",
    "export_fetch",
    "export_close",
}


def test_a_bot_of_020_is_refused_past_the_cap_every_time(
    database_url: str, old: psycopg.Connection[dict[str, Any]]
) -> None:
    # 0.2.0 knows nothing of notify and answers every refusal: its statements must refuse each
    # request past the cap, with the time to retry, before and after 0.3.0's bots refused (and
    # notified) in the same window. Its refusals count too: a 0.3.0 bot's next refusal in the
    # window is a quiet one, the user having been told by the old bot.
    second = timedelta(seconds=1)
    retry_at = T0.replace(second=0) + timedelta(minutes=1)
    assert old_begin_turn(old, T0, caps=[1])["allowed"]
    refused = [old_begin_turn(old, T0 + i * second, caps=[1]) for i in range(1, 3)]
    assert [(r["allowed"], r["retry_at"], r["refused_window"]) for r in refused] == [
        (False, retry_at, 60)
    ] * 2
    assert all(r["session_id"] is None for r in refused)
    with Store(database_url, max_size=1, rate_per_minute=1) as new:
        turn = new.begin_turn("telegram", 42, now=T0 + 3 * second)
        assert not turn.allowed and not turn.notify_refusal
        rate = {"windows": [60], "caps": [1], "durable": False}
        user = turn.user.user_id
        decision = old.execute(STORE["check_rate_limit"], {"user_id": user, "now": T0, **rate})
        assert decision.fetchall() == [
            {"allowed": False, "retry_at": retry_at, "refused_window": 60}
        ]
        # The next minute: the new bot's first refusal notifies, the old one is still refused.
        later = T0 + timedelta(minutes=1)
        assert new.begin_turn("telegram", 42, now=later).allowed
        assert new.begin_turn("telegram", 42, now=later + second).notify_refusal
        assert not old_begin_turn(old, later + 2 * second, caps=[1])["allowed"]
    counts = old.execute(
        "SELECT request_count, refused_count FROM rate_limits ORDER BY window_start"
    ).fetchall()
    assert counts == [
        {"request_count": 1, "refused_count": 4},
        {"request_count": 1, "refused_count": 2},
    ]
