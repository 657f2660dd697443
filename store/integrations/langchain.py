"""LangChain chat history on the sessionkeeper store (``pip install 'sessionkeeper[langchain]'``).

``SessionkeeperChatMessageHistory`` is a ``BaseChatMessageHistory``, made for the
``get_session_history`` of ``RunnableWithMessageHistory``::

    def history(channel: str, channel_user_id: str) -> SessionkeeperChatMessageHistory:
        return SessionkeeperChatMessageHistory(db, channel=channel, channel_user_id=channel_user_id)

With ``channel``/``channel_user_id`` it works on that user's current session, found (or opened,
after ``idle_timeout``, carrying the last pairs over) as ``begin_turn`` does, once per history
object; ``RunnableWithMessageHistory`` makes one per call. With ``session_id`` it works on that
session. A ``Store`` serves the sync methods (``invoke``), an ``AsyncStore`` the async ones
(``ainvoke``); the other kind raises ``StoreMismatch`` (a ``TypeError`` and a ``StoreError``).

Messages keep their type and fields: human, AI (tool calls, usage, ids, metadata), system and
tool (``tool_call_id``, status, ...) messages are stored with the roles ``user``,
``assistant``, ``system`` and ``tool``; the fields beyond the text, and list content (content
blocks), go into the message's ``extra`` (JSON, at most ``max_message_bytes``). Other message
types, fields that are not JSON and over-size content raise ``store.InvalidInput`` before
anything is written. ``add_messages`` trims the session to ``history_pairs`` pairs (2 x pairs
newest messages), as ``finish_turn`` does; ``messages`` returns that window; ``clear`` deletes
the session's messages (the session stays, and so does the user's place in it).

Rate limits and token usage are not applied here: a bot that wants them calls ``begin_turn``
(or ``check_rate_limit``) and ``track_usage`` around the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
    message_to_dict,
    messages_from_dict,
)

from .. import validate
from ..client import AsyncStore, Store
from ..errors import InvalidInput, StoreError
from ..models import Message

__all__ = ["SessionkeeperChatMessageHistory", "StoreMismatch", "from_store", "to_store"]

# LangChain's message class, the store's role, LangChain's type name.
KINDS: tuple[tuple[type[BaseMessage], str, str], ...] = (
    (HumanMessage, "user", "human"),
    (AIMessage, "assistant", "ai"),
    (SystemMessage, "system", "system"),
    (ToolMessage, "tool", "tool"),
)
_TYPE_OF_ROLE = {role: kind for _, role, kind in KINDS}


class StoreMismatch(StoreError, TypeError):
    """A sync method was called on a history over an ``AsyncStore``, or an async one over a
    ``Store``."""


def to_store(message: BaseMessage) -> dict[str, Any]:
    """The store's ``{role, content, extra}`` for a LangChain message: every field that differs
    from its default goes into ``extra``; list content is kept there and its text in content."""
    message = message_chunk_to_message(message)  # a streamed AIMessageChunk: its AIMessage
    role = next((role for cls, role, _ in KINDS if isinstance(message, cls)), None)
    if role is None:
        raise InvalidInput(
            f"{type(message).__name__} is not stored: use human, AI, system or tool messages",
            field="messages",
        )
    fields = type(message).model_fields
    extra = {
        key: value
        for key, value in message_to_dict(message)["data"].items()
        if key not in ("content", "type")
        and not (key in fields and value == fields[key].get_default(call_default_factory=True))
    }
    content = message.content
    if not isinstance(content, str):
        extra["content"] = content
        content = _text(content)
    return {"role": role, "content": content, "extra": extra or None}


def _text(blocks: Sequence[str | Mapping[str, Any]]) -> str:
    """The text of list content: its strings and text blocks, one per line."""
    parts = [b if isinstance(b, str) else b.get("text") for b in blocks]
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def from_store(message: Message) -> BaseMessage:
    """The LangChain message a stored message stands for. Messages a bot stored without extra
    fields become plain messages of their role (a tool message then has an empty call id)."""
    kind = _TYPE_OF_ROLE[message.role]
    data: dict[str, Any] = {"content": message.content, **(message.extra or {})}
    if kind == "tool":
        data.setdefault("tool_call_id", "")
    return messages_from_dict([{"type": kind, "data": data}])[0]


class SessionkeeperChatMessageHistory(BaseChatMessageHistory):
    """A session's history as LangChain messages: ``(db, channel=..., channel_user_id=...)``
    for the user's current session (``chat=...``: of its conversation in that chat, an id or
    a framework's chat object; docs/conversations.md), or ``(db, session_id=...)``; ``db`` is
    a ``Store`` (sync methods) or an ``AsyncStore`` (async methods). ``history_pairs``
    defaults to the store's."""

    def __init__(
        self,
        db: Store | AsyncStore,
        *,
        session_id: UUID | str | None = None,
        channel: str | None = None,
        channel_user_id: str | int | None = None,
        chat: object = None,
        history_pairs: int | None = None,
    ) -> None:
        if not isinstance(db, Store | AsyncStore):
            raise TypeError(f"db must be a store.Store or store.AsyncStore, not {type(db)}")
        by_user = channel is not None or channel_user_id is not None
        if by_user == (session_id is not None):
            raise InvalidInput("give either session_id, or channel and channel_user_id")
        self.db = db
        self.history_pairs = validate.pairs(
            history_pairs, "history_pairs", default=db.config.history_pairs
        )
        self._session_id = None if session_id is None else validate.uuid(session_id, "session_id")
        if chat is not None and not by_user:
            raise InvalidInput("chat goes with channel and channel_user_id", field="chat")
        self._user: tuple[str, str] | None = None
        self._chat_id: str | None = None
        if by_user:
            self._user = (
                validate.channel(db.config, channel),
                validate.identifier(channel_user_id, "channel_user_id"),
            )
            self._chat_id = validate.chat(chat, self._user[1])

    @property
    def session_id(self) -> UUID:
        """The session this history works on. Over an ``AsyncStore`` with a user given, it is
        known once an async method has run (or after ``await history.aget_session_id()``)."""
        if self._session_id is None:
            if isinstance(self.db, AsyncStore):
                raise StoreError(
                    "the user's session is not known yet: await history.aget_session_id() first"
                )
            self._session_id = self._find_session(self._sync())
        return self._session_id

    async def aget_session_id(self) -> UUID:
        db = self._async()
        if self._session_id is None:
            assert self._user is not None
            user = await db.get_or_create_user(*self._user)
            session = await db.get_or_create_session(user.user_id, chat=self._chat_id)
            self._session_id = session.session_id
        return self._session_id

    def _find_session(self, db: Store) -> UUID:
        assert self._user is not None
        user = db.get_or_create_user(*self._user)
        return db.get_or_create_session(user.user_id, chat=self._chat_id).session_id

    # -- sync, over a Store ---------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The last ``history_pairs`` pairs of the session, oldest first."""
        history = self._sync().get_history(self.session_id, self.history_pairs)
        return [from_store(m) for m in history]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = [to_store(m) for m in messages]
        if batch:
            self._sync().append_messages(self.session_id, batch, max_pairs=self.history_pairs)

    def clear(self) -> None:
        self._sync().clear_session_history(self.session_id)

    # -- async, over an AsyncStore --------------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        session_id = await self.aget_session_id()
        history = await self._async().get_history(session_id, self.history_pairs)
        return [from_store(m) for m in history]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = [to_store(m) for m in messages]
        if batch:
            session_id = await self.aget_session_id()
            await self._async().append_messages(session_id, batch, max_pairs=self.history_pairs)

    async def aclear(self) -> None:
        await self._async().clear_session_history(await self.aget_session_id())

    # -- the store's kind -------------------------------------------------------------------------

    def _sync(self) -> Store:
        if not isinstance(self.db, Store):
            raise StoreMismatch(
                "this history is over an AsyncStore: use aget_messages, aadd_messages and aclear"
                " (ainvoke), or give it a Store"
            )
        return self.db

    def _async(self) -> AsyncStore:
        if not isinstance(self.db, AsyncStore):
            raise StoreMismatch(
                "this history is over a Store: use messages, add_messages and clear (invoke),"
                " or give it an AsyncStore"
            )
        return self.db
