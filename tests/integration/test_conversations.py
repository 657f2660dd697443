"""Conversations (issue 23): one per user and chat, shared group conversations, continuity
across linked channels, and turns that use tools (docs/conversations.md)."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, TypeAdapter
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)

from sessionkeeper.jobs import session_archival
from store import InvalidInput, Store, prompt

PRIVATE, GROUP = 42, -100123
LATER = T0 + timedelta(minutes=1)

OPENAI = TypeAdapter(list[ChatCompletionMessageParam])
ANTHROPIC = TypeAdapter(list[MessageParam])

# A whole tool-using exchange as a bot gets it from a chat-completion API (OpenAI's shape).
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
EXCHANGE: list[dict[str, Any]] = [
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "-3 °C"},
    {"role": "assistant", "content": "Cold: -3 °C."},
]


def accepted(adapter: TypeAdapter[Any], messages: list[dict[str, Any]]) -> Any:
    """The messages as a client library's request type reads them (fields it does not know are
    dropped, so a round trip that changes nothing means every field was taken)."""
    return _read(adapter.validate_python(messages))


def _read(value: Any) -> Any:
    """A validated value with its lazily validated iterables (``Iterable[...]`` fields) read."""
    if isinstance(value, BaseModel):  # a block the union matched to a response model
        return _read(value.model_dump(exclude_none=True))
    if isinstance(value, dict):
        return {key: _read(item) for key, item in value.items()}
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return value
    return [_read(item) for item in value]


def say(store: Store, user: int, text: str, reply: str, **options: Any) -> Any:
    turn = store.begin_turn("telegram", user, now=options.pop("now", T0), **options)
    store.finish_turn(turn, text, reply, now=turn.started_at)
    return turn


def texts(turn: Any) -> list[str]:
    return [m.content for m in turn.history]


# -- conversation scope --------------------------------------------------------------------


def test_a_group_turn_does_not_see_the_private_chat(store: Store) -> None:
    say(store, PRIVATE, "in private", "ok private", chat=PRIVATE)
    group = say(store, PRIVATE, "in group", "ok group", chat=GROUP, now=LATER)
    assert group.history == []
    assert group.chat_id == str(GROUP)
    again = store.begin_turn("telegram", PRIVATE, now=LATER + timedelta(minutes=1))
    assert texts(again) == ["in private", "ok private"]
    in_group = store.begin_turn("telegram", PRIVATE, chat=GROUP, now=LATER + timedelta(minutes=1))
    assert texts(in_group) == ["in group", "ok group"]


def test_no_chat_and_the_private_chat_are_one_conversation(store: Store) -> None:
    plain = say(store, 7, "a", "b")
    by_id = store.begin_turn("telegram", 7, chat=7, now=LATER)
    by_object = store.begin_turn(
        "telegram", 7, chat=SimpleNamespace(id=7, type="private"), now=LATER
    )
    assert plain.session_id == by_id.session_id == by_object.session_id
    assert texts(by_object) == ["a", "b"] and by_object.chat_id is None


def test_group_members_have_a_conversation_each_by_default(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    chat = {"id": GROUP, "type": "supergroup"}
    say(store, 1, "from one", "to one", chat=chat)
    two = store.begin_turn("telegram", 2, chat=chat, now=LATER)
    assert two.history == []
    # Rate limits count per user, whatever the chat.
    assert count(conn, "rate_limits") == 2


def test_a_shared_group_conversation_shows_who_spoke(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=2, group_conversations="shared") as shared:
        first = shared.begin_turn("telegram", 1, display_name="Ann", chat=GROUP, now=T0)
        shared.finish_turn(first, "hello", "hi Ann", input_tokens=5, now=T0)
        second = shared.begin_turn("telegram", 2, display_name="Bob", chat=GROUP, now=LATER)
        assert texts(second) == ["hello", "hi Ann"]
        assert [m.speaker for m in second.history] == ["Ann", "Ann"]
        assert second.history[0].as_prompt() == {"role": "user", "content": "Ann: hello"}
        shared.finish_turn(second, "and me?", "hi Bob", input_tokens=7, now=LATER)
        third = shared.begin_turn(
            "telegram", 1, display_name="Ann", chat=GROUP, now=LATER + timedelta(minutes=1)
        )
        assert texts(third) == ["hello", "hi Ann", "and me?", "hi Bob"]
        assert prompt(third.history)[2] == {"role": "user", "content": "Bob: and me?"}
        # Usage and rate limits stay per user; each message lives in its speaker's session.
        rows = conn.execute(
            "SELECT u.display_name, s.input_tokens FROM usage_stats s"
            " JOIN users u USING (user_id) ORDER BY 1"
        ).fetchall()
        assert rows == [("Ann", 5), ("Bob", 7)]
        assert count(conn, "sessions", f"chat_id = '{GROUP}'") == 2
        # Erasing one member removes that member's messages only.
        shared.forget_user(second.user.user_id)
        after = shared.begin_turn(
            "telegram", 1, display_name="Ann", chat=GROUP, now=LATER + timedelta(minutes=2)
        )
        assert texts(after) == ["hello", "hi Ann"]


def test_idle_renewal_archival_restore_and_export_keep_the_chat(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    group = say(store, 5, "g1", "r1", chat=GROUP)
    private = say(store, 5, "p1", "q1")
    # After idle_timeout the group conversation starts a new session, carrying its pairs.
    renewed = store.begin_turn("telegram", 5, chat=GROUP, now=T0 + timedelta(hours=1))
    assert renewed.session_created and renewed.session_id != group.session_id
    assert texts(renewed) == ["g1", "r1"]
    # Archival moves the idle sessions with their chat; restored, they are what they were.
    now = T0 + timedelta(days=40)
    session_archival.run(conn, session_archival.Settings(), now)
    chats = dict(conn.execute("SELECT session_id, chat_id FROM archived_sessions").fetchall())
    assert chats == {
        group.session_id: str(GROUP),
        renewed.session_id: str(GROUP),
        private.session_id: None,
    }
    session_archival.restore(conn, group.session_id, now, make_current=True)
    back = store.begin_turn("telegram", 5, chat=GROUP, now=now)
    assert back.session_id == group.session_id and texts(back) == ["g1", "r1"]
    assert store.begin_turn("telegram", 5, now=now).session_id != group.session_id
    out = io.StringIO()
    store.export_user(back.user.user_id, out)
    sessions = json.loads(out.getvalue())["tables"]["sessions"]
    assert [s["chat_id"] for s in sessions] == [str(GROUP), None]  # the new private one


# -- continuity across linked channels ------------------------------------------------------


def test_linked_users_continue_one_conversation_until_unlinked(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=2, linked_continuity=True) as store:
        telegram = store.begin_turn("telegram", 100, now=T0)
        store.finish_turn(telegram, "on telegram", "noted", now=T0)
        whatsapp_user = store.get_or_create_user("whatsapp", "+4799", now=T0)
        code = store.create_link_code(telegram.user.user_id, now=T0)
        store.redeem_link_code(whatsapp_user.user_id, code.code, now=T0)

        whatsapp = store.begin_turn("whatsapp", "+4799", now=LATER)
        assert texts(whatsapp) == ["on telegram", "noted"]
        store.finish_turn(whatsapp, "on whatsapp", "noted too", now=LATER)
        back = store.begin_turn("telegram", 100, now=LATER + timedelta(minutes=1))
        assert texts(back) == ["on telegram", "noted", "on whatsapp", "noted too"]

        store.unlink(whatsapp_user.user_id)
        split = store.begin_turn("whatsapp", "+4799", now=LATER + timedelta(minutes=2))
        assert texts(split) == ["on whatsapp", "noted too"]
        assert texts(store.begin_turn("telegram", 100, now=LATER + timedelta(minutes=2))) == [
            "on telegram",
            "noted",
        ]
        # Erasing one user removes its messages only.
        store.forget_user(whatsapp_user.user_id)
        assert count(conn, "session_messages") == 2


def test_without_continuity_linked_users_keep_their_own_conversations(store: Store) -> None:
    telegram = say(store, 101, "on telegram", "noted")
    whatsapp_user = store.get_or_create_user("whatsapp", "+4798", now=T0)
    code = store.create_link_code(telegram.user.user_id, now=T0)
    store.redeem_link_code(whatsapp_user.user_id, code.code, now=T0)
    assert store.begin_turn("whatsapp", "+4798", now=LATER).history == []


# -- tool-call turns ---------------------------------------------------------------------------


def test_a_tool_using_turn_is_stored_whole_and_prompts_as_the_apis_take_it(store: Store) -> None:
    turn = store.begin_turn("telegram", 9, now=T0)
    appended = store.finish_turn(turn, "Weather in Oslo?", EXCHANGE, now=T0)
    assert (appended.appended, appended.trimmed) == (4, 0)
    # The same call again (a retry) stores nothing more.
    assert store.finish_turn(turn, "Weather in Oslo?", EXCHANGE, now=T0) == appended
    history = store.begin_turn("telegram", 9, now=LATER).history
    openai = prompt(history)
    assert openai == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "-3 °C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "Cold: -3 °C."},
    ]
    # The client libraries' own request types accept them, field for field.
    assert accepted(OPENAI, openai) == openai
    anthropic = prompt(history, format="anthropic")
    assert anthropic[1:3] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "-3 °C"}],
        },
    ]
    assert accepted(ANTHROPIC, anthropic) == anthropic


def test_langchain_shaped_tool_calls_prompt_in_openai_shape(store: Store) -> None:
    turn = store.begin_turn("telegram", 10, now=T0)
    call = {"name": "weather", "args": {"city": "Oslo"}, "id": "c1", "type": "tool_call"}
    reply: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "extra": {"tool_calls": [call]}},
        {"role": "tool", "content": "-3", "extra": {"tool_call_id": "c1"}},
        {"role": "assistant", "content": "Cold."},
    ]
    store.finish_turn(turn, "Oslo?", reply, now=T0)
    openai = prompt(store.begin_turn("telegram", 10, now=LATER).history)
    assert openai[1]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert accepted(OPENAI, openai) == openai


def test_trimming_and_the_window_never_start_with_a_tool_result(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    turn = store.begin_turn("telegram", 11, now=T0)
    store.finish_turn(turn, "Oslo?", EXCHANGE, now=T0)
    # A window of one pair would start at the tool result: it starts after it.
    window = store.begin_turn("telegram", 11, history_pairs=1, now=LATER).history
    assert [m.role for m in window] == ["assistant"]
    # Trimming to two pairs (4 messages) would keep the result without its call: it goes too.
    again = store.begin_turn("telegram", 11, now=LATER)
    store.finish_turn(again, "and now?", "still cold", max_pairs=2, now=LATER)
    roles = conn.execute(
        "SELECT role FROM session_messages WHERE session_id = %s ORDER BY seq", (turn.session_id,)
    ).fetchall()
    assert [r for (r,) in roles] == ["assistant", "user", "assistant"]


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chat", "reply"),
    [
        (object(), "fine"),
        ({"id": GROUP}, "fine"),
        (True, "fine"),
        (None, [{"role": "assistant", "content": "", "tool_calls": "weather"}]),
        (None, [{"role": "assistant", "content": "", "tool_calls": ["weather"]}]),
        (None, [{"role": "tool", "content": "-3", "tool_call_id": "call_9"}, EXCHANGE[2]]),
        (None, [EXCHANGE[0], {"role": "tool", "content": "-3", "tool_call_id": "call_9"}]),
        (None, []),
    ],
)
def test_bad_chats_and_tool_turns_are_refused_and_write_nothing(
    store: Store, conn: psycopg.Connection[Any], chat: object, reply: Any
) -> None:
    turn = store.begin_turn("telegram", 12, now=T0)
    before = count(conn, "session_messages"), count(conn, "sessions"), count(conn, "rate_limits")
    with pytest.raises(InvalidInput):
        if chat is not None:
            store.begin_turn("telegram", 12, chat=chat, now=T0)
        store.finish_turn(turn, "hi", reply, now=T0)
    rows = conn.execute("SELECT request_count FROM rate_limits").fetchall()
    assert rows == [(1,)]
    assert (count(conn, "session_messages"), count(conn, "sessions"), 1) == before
