"""What the bot integrations (aiogram, python-telegram-bot, pywa for WhatsApp) share, free of
all three: beginning a turn for a message's sender (answering the first refusal of a rate-limit
window, dropping the later ones quietly), the bot's exemption of messages from the rate limit,
finishing a turn with the reply, and the refusal text. Each integration adds only its
framework's glue: where the message is in what its handlers get, what its exemption filters are
given, and how a message is
answered."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypedDict, TypeVar

from ..client import AsyncStore
from ..errors import InvalidInput, StoreError
from ..models import Appended, Message, Turn

# Fields: {retry_in} ("40 seconds", "3 minutes", "2 hours"), {retry_at} (an aware datetime:
# {retry_at:%H:%M %Z}), {window} (the refusing window, in seconds).
DEFAULT_REFUSAL = "You are sending messages too fast. Please try again in {retry_in}."


def retry_in(seconds: float) -> str:
    """A short English duration, rounded up: never earlier than the limit allows."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= 1.5 * size:
            count = math.ceil(seconds / size)
            return f"{count} {unit}s"
    count = max(1, math.ceil(seconds))
    return f"{count} second{'s' if count != 1 else ''}"


def refusal_text(template: str, turn: Turn) -> str:
    """The refusal message for a refused ``turn``, counted on the database's clock."""
    retry_at = turn.rate.retry_at
    assert retry_at is not None, "only a refused turn has a retry time"
    wait = (retry_at - turn.started_at).total_seconds()
    return template.format(
        retry_in=retry_in(wait), retry_at=retry_at, window=turn.rate.refused_window
    )


def display_name(first_name: str | None, last_name: str | None = None) -> str | None:
    name = " ".join(part for part in (first_name, last_name) if part)
    return name or None


class Sender(Protocol):
    """A message's sender: a Telegram user as both Telegram frameworks model it (a WhatsApp
    integration gives its user in this shape)."""

    @property
    def id(self) -> int | str: ...
    @property
    def first_name(self) -> str: ...
    @property
    def last_name(self) -> str | None: ...


class ChatMessage(Protocol):
    """A message as the frameworks model it (what the turns read of it)."""

    @property
    def text(self) -> str | None: ...
    @property
    def caption(self) -> str | None: ...
    @property
    def chat(self) -> Any: ...  # its chat: id and type ("private", "group", ...), see validate.chat


EventT = TypeVar("EventT")
MessageT = TypeVar("MessageT", bound=ChatMessage)
# The bot's exemption: called with what the integration gives it (see ``exempts``); true (or an
# awaitable of true) exempts the message from the rate limit.
Exempt = Callable[..., Any]
# What a reply may be: the text, or the whole exchange after the user's message (the assistant's
# tool calls, the tools' results, the final answer), as finish_turn takes it.
Reply = str | Sequence[Mapping[str, Any] | Message]


class TurnOptions(TypedDict, total=False):
    """``ChannelTurns``' keyword options, for a framework class that adds its own."""

    refusal: str
    channel: str
    history_pairs: int | None


class ChannelTurns(ABC, Generic[EventT, MessageT]):
    """Turns of a channel's users on an ``AsyncStore`` (the frameworks are asyncio). A framework's
    subclass says where the message is in the event its handlers get (``message_of``) and how
    to answer it (``answer``).

    ``exempt``: the bot's filter of messages the rate limit does not apply to (commands such as
    /start, the steps of a form): such a message begins a turn that is admitted and counted
    against no cap (``begin_turn(rate_limit=False)``), so its handler gets a ``Turn`` like any
    other. None: every message counts."""

    def __init__(
        self,
        db: AsyncStore,
        *,
        refusal: str = DEFAULT_REFUSAL,
        channel: str = "telegram",
        history_pairs: int | None = None,
        exempt: Exempt | None = None,
    ) -> None:
        if not isinstance(db, AsyncStore):
            raise InvalidInput(
                f"the bot integrations need a store.AsyncStore (got {type(db).__name__}):"
                " the frameworks run on asyncio, and a Store would block their event loop"
            )
        try:
            refusal.format(retry_in="1 minute", retry_at=datetime.now(UTC), window=60)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"refusal: unknown field or bad format {exc}; use {{retry_in}}, {{retry_at}},"
                " {window}"
            ) from None
        if exempt is not None and not callable(exempt):
            raise InvalidInput(
                f"exempt must be a filter or a callable, not {type(exempt).__name__}",
                field="exempt",
            )
        self.db = db
        self.refusal = refusal
        self.channel = channel
        self.history_pairs = history_pairs
        self.exempt = exempt

    @abstractmethod
    def message_of(self, event: EventT) -> MessageT:
        """The message to reply to in ``event``; ``InvalidInput`` when it holds none."""

    @abstractmethod
    def answer(self, message: MessageT, text: str, **send: Any) -> Awaitable[Any]:
        """Send ``text`` to the chat of ``message``."""

    async def exempts(self, event: object, *context: Any) -> bool:
        """Whether the bot's ``exempt`` filter exempts ``event`` from the rate limit: it is
        called as ``exempt(event, *context)`` (an integration passes what its framework's
        handlers get) and awaited when it returns an awaitable."""
        if self.exempt is None:
            return False
        result = self.exempt(event, *context)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def admit(
        self, message: MessageT, sender: Sender, *, exempt: bool = False
    ) -> Turn | None:
        """Begin the turn of ``sender``, who sent ``message``: the ``Turn`` when admitted
        (``exempt``: admitted without counting against the rate limit). When the rate limit
        refuses it the result is ``None``, and ``message`` is answered with the refusal if it
        is the first refusal of the window (``turn.notify_refusal``); later refusals of that
        window are dropped without an answer (``sessionkeeper_store_refusals_dropped_total``
        counts them when the store is instrumented)."""
        turn = await self.db.begin_turn(
            self.channel,
            sender.id,
            display_name=display_name(sender.first_name, sender.last_name),
            history_pairs=self.history_pairs,
            # The conversation is the sender in this chat: a group's turn never sees the
            # private chat's history (docs/conversations.md).
            chat=message.chat,
            rate_limit=not exempt,
        )
        if turn.allowed:
            return turn
        if turn.notify_refusal:
            await self.answer(message, refusal_text(self.refusal, turn))
        return None

    async def reply(
        self,
        event: EventT,
        turn: Turn,
        reply: Reply,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        user_message: str | None = None,
        **send: Any,
    ) -> Appended:
        """Finish the turn and answer: ``finish_turn`` stores the user's message (its text or
        caption, or ``user_message``) and ``reply`` with the token usage, then the reply is
        sent. ``reply`` is the text, or a tool-using exchange (the list ``finish_turn`` takes,
        ending with the assistant's final text, which is what is sent). aiogram:
        ``message.answer(reply, **send)``; python-telegram-bot: ``update.message.reply_text(reply,
        **send)``; pywa: ``msg.reply_text(reply, **send)``. Stored before sent: a user who saw the
        reply finds it in the history of the next turn. When storing fails (``StoreError``: a
        message the store refuses, the database gone) the reply is still sent, then the error
        raised."""
        message = self.message_of(event)
        answer = final_text(reply)  # before anything is written: an exchange may be malformed
        text = user_message if user_message is not None else message.text or message.caption
        try:
            appended = await self.db.finish_turn(
                turn,
                text or "",
                reply,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
            )
        except StoreError:
            await self.answer(message, answer, **send)
            raise
        await self.answer(message, answer, **send)
        return appended


# The name the Telegram integrations import.
TelegramTurns = ChannelTurns


def final_text(reply: Reply) -> str:
    """The text to send for ``reply``: the text itself, or the content of an exchange's last
    message, which must be the assistant's final answer."""
    if isinstance(reply, str):
        return reply
    last = reply[-1] if isinstance(reply, Sequence) and reply else None
    role: object = None
    content: object = None
    if isinstance(last, Message):
        role, content = last.role, last.content
    elif isinstance(last, Mapping):
        role, content = last.get("role"), last.get("content")
    if role != "assistant" or not isinstance(content, str) or not content:
        raise InvalidInput(
            "reply must be a text or a list of messages ending with the assistant's final"
            " text (what is sent)",
            field="reply",
        )
    return content
