"""The LangChain integration with the real langchain_core: RunnableWithMessageHistory over a
fake chat model from langchain_core, on a real store, sync and async."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec, RunnableConfig, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from store_support import count

import store
from sessionkeeper.jobs import session_archival
from store import AsyncStore, InvalidInput, Store
from store.integrations.langchain import SessionkeeperChatMessageHistory, StoreMismatch

ROOT = Path(__file__).resolve().parents[2]
# langchain-core 1.x marks RunnableWithMessageHistory deprecated (for LangGraph); it works.
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
Conn = psycopg.Connection[tuple[Any, ...]]

# One message of every type, with the fields that make it what it is.
EVERY_KIND: list[BaseMessage] = [
    SystemMessage("You answer in one word."),
    HumanMessage("What's the weather in Oslo?", name="ann", id="h-1"),
    AIMessage(
        "",
        tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "call-1"}],
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
        id="ai-1",
    ),
    ToolMessage("-3 °C, snow", tool_call_id="call-1", name="weather", status="error"),
    AIMessage(
        [{"type": "text", "text": "Snowy."}, {"type": "text", "text": "Cold."}],
        additional_kwargs={"refusal": None, "nested": {"ok": [1, 2.5, True]}},
    ),
    HumanMessage("Thanks!"),
]


@pytest.fixture
def db(database_url: str) -> Iterator[Store]:
    with Store(database_url, max_size=2) as opened:
        yield opened


def chain_with_history(
    db: Store | AsyncStore, replies: list[str], seen: list[list[BaseMessage]]
) -> RunnableWithMessageHistory:
    """A prompt, a recorder of what the model is sent, and a fake model answering ``replies``
    in turn; the history is the user's current session."""

    def history(channel: str, channel_user_id: str) -> SessionkeeperChatMessageHistory:
        return SessionkeeperChatMessageHistory(db, channel=channel, channel_user_id=channel_user_id)

    def record(prompt: Any) -> Any:
        seen.append(prompt.to_messages())
        return prompt

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    model = GenericFakeChatModel(messages=iter([AIMessage(r) for r in replies]))
    return RunnableWithMessageHistory(
        prompt | RunnableLambda(record) | model,
        history,
        input_messages_key="question",
        history_messages_key="history",
        history_factory_config=[
            ConfigurableFieldSpec(id="channel", annotation=str),
            ConfigurableFieldSpec(id="channel_user_id", annotation=str),
        ],
    )


USER: RunnableConfig = {"configurable": {"channel": "telegram", "channel_user_id": "42"}}


def contents(messages: list[BaseMessage]) -> list[tuple[str, Any]]:
    return [(m.type, m.content) for m in messages]


def test_a_sync_chain_remembers_the_conversation(db: Store, conn: Conn) -> None:
    seen: list[list[BaseMessage]] = []
    chain = chain_with_history(db, ["Hello Ann.", "You are Ann."], seen)
    assert chain.invoke({"question": "I am Ann."}, USER).content == "Hello Ann."
    assert chain.invoke({"question": "Who am I?"}, USER).content == "You are Ann."

    assert contents(seen[1]) == [
        ("system", "Be brief."),
        ("human", "I am Ann."),
        ("ai", "Hello Ann."),
        ("human", "Who am I?"),
    ]
    # Both turns went to the user's one current session, as the store's own roles.
    rows = conn.execute(
        "SELECT u.channel_user_id, m.role, m.content FROM session_messages m"
        " JOIN sessions s USING (session_id) JOIN users u ON u.user_id = s.user_id ORDER BY m.seq"
    ).fetchall()
    assert rows == [
        ("42", "user", "I am Ann."),
        ("42", "assistant", "Hello Ann."),
        ("42", "user", "Who am I?"),
        ("42", "assistant", "You are Ann."),
    ]
    # The store's own turn API sees the same history.
    turn = db.begin_turn("telegram", "42")
    assert [m.content for m in turn.history] == [r[2] for r in rows]


def test_an_async_chain_remembers_the_conversation(database_url: str) -> None:
    seen: list[list[BaseMessage]] = []

    async def scenario() -> list[BaseMessage]:
        async with AsyncStore(database_url, max_size=2) as db:
            chain = chain_with_history(db, ["Hi.", "Blue."], seen)
            await chain.ainvoke({"question": "Hello"}, USER)
            await chain.ainvoke({"question": "Sky colour?"}, USER)
            history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id=42)
            return await history.aget_messages()

    stored = asyncio.run(scenario())
    assert contents(seen[1])[1:] == [("human", "Hello"), ("ai", "Hi."), ("human", "Sky colour?")]
    assert contents(stored) == [
        ("human", "Hello"),
        ("ai", "Hi."),
        ("human", "Sky colour?"),
        ("ai", "Blue."),
    ]


def test_messages_of_every_type_round_trip_with_their_fields(db: Store) -> None:
    session = db.get_or_create_session(db.get_or_create_user("telegram", "7").user_id)
    history = SessionkeeperChatMessageHistory(db, session_id=session.session_id)
    history.add_messages(EVERY_KIND)
    # A streamed reply is stored as the message it adds up to.
    history.add_message(AIMessageChunk(content="streamed", id="chunk-1"))

    assert history.messages == [*EVERY_KIND, AIMessage("streamed", id="chunk-1")]
    read = history.messages
    assert isinstance(read[2], AIMessage) and read[2].tool_calls[0]["args"] == {"city": "Oslo"}
    assert isinstance(read[3], ToolMessage) and read[3].tool_call_id == "call-1"

    # Plain messages are stored as plain rows (extra NULL), readable by any bot.
    stored = db.get_history(session.session_id)
    assert stored[5].as_dict() == {
        "role": "user",
        "content": "Thanks!",
        "timestamp": stored[5].timestamp,
    }
    assert stored[0].extra is None and stored[3].extra == {
        "tool_call_id": "call-1",
        "name": "weather",
        "status": "error",
    }
    assert stored[4].content == "Snowy.\nCold."  # list content: its text, the blocks in extra


def test_async_round_trip_is_the_same(database_url: str) -> None:
    async def scenario() -> tuple[list[BaseMessage], list[BaseMessage]]:
        async with AsyncStore(database_url, max_size=2) as db:
            history = SessionkeeperChatMessageHistory(db, channel="web", channel_user_id="u")
            await history.aadd_messages(EVERY_KIND)
            again = SessionkeeperChatMessageHistory(db, session_id=history.session_id)
            read = await again.aget_messages()
            await again.aclear()
            return read, await history.aget_messages()

    read, cleared = asyncio.run(scenario())
    assert read == EVERY_KIND and cleared == []


def test_the_history_window_and_trimming(db: Store, conn: Conn) -> None:
    history = SessionkeeperChatMessageHistory(
        db, channel="telegram", channel_user_id="9", history_pairs=2
    )
    for n in range(4):
        history.add_messages([HumanMessage(f"q{n}"), AIMessage(f"a{n}")])
    # add_messages trims as finish_turn does: the newest 2 pairs stay.
    assert contents(history.messages) == [
        ("human", "q2"),
        ("ai", "a2"),
        ("human", "q3"),
        ("ai", "a3"),
    ]
    assert count(conn, "session_messages") == 4
    wide = SessionkeeperChatMessageHistory(db, session_id=history.session_id, history_pairs=1)
    assert contents(wide.messages) == [("human", "q3"), ("ai", "a3")]


def test_clear_deletes_the_messages_and_keeps_the_session(db: Store, conn: Conn) -> None:
    history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="3")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    history.clear()
    assert history.messages == [] and count(conn, "session_messages") == 0
    assert count(conn, "sessions") == 1
    history.add_messages([HumanMessage("again")])
    assert contents(history.messages) == [("human", "again")]


def test_the_users_session_is_renewed_after_the_idle_timeout(db: Store, conn: Conn) -> None:
    first = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="5")
    first.add_messages([HumanMessage("old question"), *EVERY_KIND[1:5]])
    assert (
        SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id=5).session_id
        == first.session_id
    )
    # The session goes idle longer than idle_timeout (30 minutes).
    conn.execute("UPDATE sessions SET last_active = now() - interval '31 minutes'")
    later = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="5")
    assert later.session_id != first.session_id
    # The new session carries the last pairs over (carry_over_pairs: 2), fields included.
    assert later.messages == EVERY_KIND[1:5]


def test_archival_and_restore_keep_the_fields(db: Store, conn: Conn) -> None:
    history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="8")
    history.add_messages(EVERY_KIND)
    session_id = history.session_id
    extras = conn.execute(
        "SELECT seq, extra FROM session_messages WHERE extra IS NOT NULL ORDER BY seq"
    ).fetchall()
    assert len(extras) == 4

    later = datetime.now(UTC) + timedelta(days=60)
    assert session_archival.run(conn, session_archival.Settings(), later).rows == 1
    assert count(conn, "session_messages") == 0
    archived = conn.execute(
        "SELECT seq, extra FROM archived_session_messages WHERE extra IS NOT NULL ORDER BY seq"
    ).fetchall()
    assert archived == extras

    assert session_archival.restore(conn, session_id, later) == len(EVERY_KIND)
    assert SessionkeeperChatMessageHistory(db, session_id=session_id).messages == EVERY_KIND


def test_erasure_removes_the_messages_and_their_fields(db: Store, conn: Conn) -> None:
    kept = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="keep")
    kept.add_messages(EVERY_KIND)
    gone = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="gone")
    gone.add_messages(EVERY_KIND)
    archived_id = gone.session_id
    conn.execute(
        "UPDATE sessions SET last_active = now() - interval '90 days' WHERE session_id = %s",
        (archived_id,),
    )
    session_archival.run(conn, session_archival.Settings(), datetime.now(UTC))
    online = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="gone")
    online.add_messages([ToolMessage("x", tool_call_id="call-9")])
    user_id = db.get_or_create_user("telegram", "gone").user_id

    db.forget_user(user_id)
    assert count(conn, "archived_session_messages") == 0
    assert count(conn, "session_messages", "extra::text LIKE '%call-9%'") == 0
    assert count(conn, "session_messages", "extra IS NOT NULL") == 4  # the other user's
    assert kept.messages == EVERY_KIND


def test_bad_messages_raise_invalid_input_and_write_nothing(db: Store, conn: Conn) -> None:
    history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="1")
    history.add_messages([HumanMessage("first")])
    big = "x" * (db.config.max_message_bytes + 1)
    bad_batches: dict[str, BaseMessage] = {
        "NaN in a field": AIMessage("a", additional_kwargs={"score": float("nan")}),
        "NUL in a field": ToolMessage("r", tool_call_id="id\x00"),
        "over-size field": AIMessage("a", additional_kwargs={"blob": big}),
        "not JSON": ToolMessage("r", tool_call_id="c", artifact=object()),
        "empty content, no fields": AIMessage(""),
        "unsupported type": ChatMessage(content="hi", role="narrator"),
    }
    for reason, message in bad_batches.items():
        with pytest.raises(store.InvalidInput):
            history.add_messages([HumanMessage("ok"), message])
        assert count(conn, "session_messages") == 1, reason
    assert contents(history.messages) == [("human", "first")]


def test_a_store_of_the_wrong_kind_raises_a_clear_error(db: Store, database_url: str) -> None:
    sync_history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id="2")
    with pytest.raises(StoreMismatch, match="AsyncStore") as raised:
        asyncio.run(sync_history.aget_messages())
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, store.StoreError)
    with pytest.raises(StoreMismatch):
        asyncio.run(sync_history.aadd_messages([HumanMessage("x")]))
    with pytest.raises(StoreMismatch):
        asyncio.run(chain_with_history(db, ["r"], []).ainvoke({"question": "q"}, USER))
    assert count_messages(database_url) == 0

    async def on_async_store() -> None:
        async with AsyncStore(database_url, max_size=1) as adb:
            history = SessionkeeperChatMessageHistory(adb, channel="telegram", channel_user_id="2")
            with pytest.raises(store.StoreError, match="aget_session_id"):
                _ = history.session_id
            with pytest.raises(StoreMismatch, match="Store"):
                _ = history.messages
            with pytest.raises(StoreMismatch):
                history.add_messages([HumanMessage("x")])
            with pytest.raises(StoreMismatch):
                history.clear()
            with pytest.raises(StoreMismatch):
                chain_with_history(adb, ["r"], []).invoke({"question": "q"}, USER)

    asyncio.run(on_async_store())
    assert count_messages(database_url) == 0


def count_messages(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return count(conn, "session_messages")


def test_constructor_arguments_are_checked(db: Store) -> None:
    with pytest.raises(store.InvalidInput):
        SessionkeeperChatMessageHistory(db)
    with pytest.raises(store.InvalidInput):
        SessionkeeperChatMessageHistory(db, session_id="not-a-uuid")
    with pytest.raises(store.InvalidInput):
        SessionkeeperChatMessageHistory(
            db, session_id="00000000-0000-0000-0000-000000000001", channel="telegram"
        )
    with pytest.raises(store.InvalidInput):
        SessionkeeperChatMessageHistory(db, channel="Not A Channel", channel_user_id="1")
    with pytest.raises(TypeError):
        SessionkeeperChatMessageHistory("postgresql://", session_id=None)  # type: ignore[arg-type]


@pytest.mark.slow  # a fresh interpreter importing langchain_core
def test_the_readme_example_runs(database_url: str) -> None:
    """The LangChain section of docs/integrations.md, run as a user would paste it."""
    document = (ROOT / "docs" / "integrations.md").read_text()
    section = document.split("\n## LangChain\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    env = {**os.environ, "SESSIONKEEPER_DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert count_messages(database_url) == 4


def test_a_history_can_be_built_for_a_chat(db: Store) -> None:
    private = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id=42)
    group = SessionkeeperChatMessageHistory(
        db, channel="telegram", channel_user_id=42, chat=-100123
    )
    private.add_messages([HumanMessage("in private")])
    group.add_messages([HumanMessage("in group")])
    assert [m.content for m in private.messages] == ["in private"]
    assert [m.content for m in group.messages] == ["in group"]
    # The chat of begin_turn's conversation: a turn in the group continues this history.
    turn = db.begin_turn("telegram", 42, chat=-100123)
    assert turn.session_id == group.session_id
    assert [m.content for m in turn.history] == ["in group"]
    with pytest.raises(InvalidInput):
        SessionkeeperChatMessageHistory(db, session_id=group.session_id, chat=-100123)
