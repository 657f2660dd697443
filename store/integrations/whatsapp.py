"""pywa (WhatsApp Cloud API), asyncio flavour: a handler decorator that begins a turn for every
incoming message it is given, and a finish helper (``pip install 'sessionkeeper[whatsapp]'``).

    turns = WhatsAppTurns(db, refusal="Slow down: try again in {retry_in}.")

    @wa.on_message(filters.text)
    @turns.handler
    async def chat(client: WhatsApp, msg: types.Message, turn: Turn) -> None:
        reply, usage = await my_model(turn.history, msg.text)
        await turns.reply(msg, turn, reply, input_tokens=usage.input, ...)

A rate-limited user gets the refusal and the handler is not called. pywa has no middleware, so
the turn is begun by the decorator, for the messages the bot's own filters pass to it.

The user is ``sender.preferred_id``: the id pywa answers to, chosen by the client's
``user_identifier_priority`` (by default the business-scoped user id, BSUID, which WhatsApp
keeps when a user hides their phone number behind a username). A 1:1 chat is the user's private
conversation; a message in a WhatsApp group (Cloud API groups: ``group_id``) is the sender's
conversation in that group, as a Telegram group is (``group_conversations``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Unpack, cast

from pywa_async.client import WhatsApp
from pywa_async.types.chat import ChatType
from pywa_async.types.message import Message
from pywa_async.types.sent_update import SentMessage

from ..client import AsyncStore
from ..errors import InvalidInput
from ..models import Turn
from ._turns import DEFAULT_REFUSAL, ChannelTurns, Exempt, TurnOptions

__all__ = ["DEFAULT_REFUSAL", "TurnHandler", "WhatsAppTurns"]

# What ``WhatsAppTurns.handler`` decorates: pywa's message callback, with the turn.
TurnHandler = Callable[[WhatsApp, Message, Turn], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Sender:
    """A WhatsApp user in the shape the shared turns read (``_turns.Sender``)."""

    id: str
    first_name: str
    last_name: str | None = None


class WhatsAppTurns(ChannelTurns[Message, Message]):
    """Turns of WhatsApp users on a ``store.AsyncStore`` (pywa's ``pywa_async.WhatsApp``).

    ``@turns.handler`` under ``@wa.on_message(...)`` begins a turn for each message the handler
    gets: admitted, the callback is called as ``callback(client, msg, turn)``; refused by the
    rate limit, the callback is not called, and the first refusal of the window is answered
    with ``refusal`` (fields ``{retry_in}``, ``{retry_at}``, ``{window}``; later ones are
    dropped quietly and counted). ``exempt``: a callable ``exempt(msg, client)`` (sync or
    async; pywa's filters are such callables, with the client first: wrap them) whose true
    result exempts the message from the rate limit (docs/conversations.md, "Refusals").
    ``reply(msg, turn, reply, ...)`` finishes the turn and answers with ``msg.reply_text``
    (keywords go to it: ``quote=True``...). The channel is ``"whatsapp"`` unless ``channel``
    says otherwise."""

    def __init__(
        self, db: AsyncStore, *, exempt: Exempt | None = None, **options: Unpack[TurnOptions]
    ) -> None:
        options.setdefault("channel", "whatsapp")
        super().__init__(db, exempt=exempt, **options)

    def handler(self, callback: TurnHandler) -> Callable[[WhatsApp, Message], Awaitable[None]]:
        """A pywa message callback that begins the turn, then calls ``callback`` with it."""
        if not callable(callback):
            raise InvalidInput(
                f"handler needs a callback (client, msg, turn), not {type(callback).__name__}"
            )

        @wraps(callback)
        async def begin(client: WhatsApp, msg: Message) -> None:
            exempt = await self.exempts(msg, client)
            turn = await self.admit(msg, sender_of(msg), exempt=exempt)
            if turn is not None:
                await callback(client, msg, turn)

        return begin

    def message_of(self, event: Message) -> Message:
        if not isinstance(event, Message):
            raise InvalidInput(
                f"reply needs the pywa_async Message of the turn, not {type(event).__name__}",
                field="event",
            )
        return event

    def answer(self, message: Message, text: str, **send: Any) -> Awaitable[SentMessage]:
        """Answer in the chat of ``message``: the 1:1 chat, or the group it was written in
        (``private=True`` answers a group message in the sender's 1:1 chat instead)."""
        if message.chat.type == ChatType.GROUP and not send.pop("private", False):
            # pywa 4.5's reply_text answers a group message in the sender's 1:1 chat (its
            # ``private`` flag reads the other way round): the group is addressed explicitly.
            quote = send.pop("quote", False)
            sent = message._client.send_message(
                to=message.chat.id,
                text=text,
                sender=message.metadata.phone_number_id,
                reply_to_message_id=message.message_id_to_reply if quote else None,
                **send,
            )
        else:
            sent = message.reply_text(text, **send)
        # pywa 4.5 types the async Message's calls with the sync ones' signatures.
        return cast("Awaitable[SentMessage]", sent)


def sender_of(msg: Message) -> _Sender:
    """The sender of ``msg`` as the store keys it: pywa's preferred id (the one replies go to,
    and the chat id of a 1:1 chat, which is therefore the user's private conversation) and the
    profile name."""
    user = msg.from_user
    return _Sender(id=user.preferred_id, first_name=user.name or "")
