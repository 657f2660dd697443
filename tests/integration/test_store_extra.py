"""Messages with extra fields (revision 0010): what a message needs beyond role and content."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from store_support import T0, store_fixture  # noqa: F401 (fixture)

from store import Store

CALL = {"tool_calls": [{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]}


def test_extra_round_trips_through_append_history_and_begin_turn(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    turn = store.begin_turn("telegram", "1", now=T0)
    assert turn.session_id is not None
    store.append_messages(
        turn.session_id,
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "", "extra": CALL},  # tool calls only: no text
            {"role": "tool", "content": "-3 °C", "extra": {"tool_call_id": "c1"}},
            {"role": "assistant", "content": "Cold.", "extra": {}},  # {} is no extra
        ],
        now=T0,
    )
    history = store.get_history(turn.session_id)
    assert [m.extra for m in history] == [None, CALL, {"tool_call_id": "c1"}, None]
    assert history[1].as_dict() == {
        "role": "assistant",
        "content": "",
        "timestamp": T0,
        "extra": CALL,
    }
    again = store.begin_turn("telegram", "1", now=T0 + timedelta(minutes=1))
    assert again.history == history
    # Stored as JSON objects, readable in SQL; plain messages hold NULL.
    rows = conn.execute(
        "SELECT extra -> 'tool_calls' -> 0 ->> 'id', extra IS NULL FROM session_messages"
        " ORDER BY seq"
    ).fetchall()
    assert rows == [(None, True), ("c1", False), (None, False), (None, True)]


def test_a_message_from_the_history_can_be_appended_again(store: Store) -> None:
    first = store.get_or_create_session(store.get_or_create_user("telegram", "2").user_id)
    call = {"role": "assistant", "content": "", "extra": {"tool_calls": [{"id": "c9"}]}}
    store.append_messages(
        first.session_id,
        [call, {"role": "tool", "content": "r", "extra": {"tool_call_id": "c9"}}],
    )
    (_, message) = store.get_history(first.session_id)
    second = store.get_or_create_session(store.get_or_create_user("telegram", "3").user_id)
    store.append_messages(second.session_id, [call, message, message.as_dict()])
    # (A history never starts with a tool result: its call must come first.)
    assert [m.extra for m in store.get_history(second.session_id)][1:] == [
        {"tool_call_id": "c9"}
    ] * 2


def test_finish_turn_and_append_messages_trim_with_max_pairs(store: Store) -> None:
    turn = store.begin_turn("telegram", "4", now=T0)
    assert turn.session_id is not None
    batch = [{"role": "user", "content": f"m{n}"} for n in range(7)]
    appended = store.append_messages(turn.session_id, batch, max_pairs=2)
    assert (appended.appended, appended.trimmed) == (7, 3)
    assert [m.content for m in store.get_history(turn.session_id)] == ["m3", "m4", "m5", "m6"]
    assert store.clear_session_history(turn.session_id) == 4
    assert store.get_history(turn.session_id) == []


def test_a_new_session_carries_the_last_pairs_with_their_extra(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    turn = store.begin_turn("telegram", "5", now=T0)
    store.finish_turn(
        turn,
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "extra": CALL},
        now=T0,
    )
    later = store.begin_turn("telegram", "5", now=T0 + timedelta(hours=2))
    assert later.session_created and later.session_id != turn.session_id
    assert [m.extra for m in later.history] == [None, CALL]
