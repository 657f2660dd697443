"""python-telegram-bot 21+: a handler in an early group that begins a turn for every incoming
message, and a finish helper (``pip install 'sessionkeeper[telegram]'``).

    turns = TelegramTurns(db, refusal="Slow down: try again in {retry_in}.")
    turns.install(application)  # a TypeHandler(Update, ...) in group -1

    async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        turn = current_turn(context)
        reply, usage = await my_model(turn.history, update.message.text)
        await turns.reply(update, turn, reply, input_tokens=usage.input, ...)

A rate-limited user gets the refusal and the update goes no further
(``ApplicationHandlerStop``): no handler of a later group runs.

Edited messages do not begin a turn by default (``edits="ignore"``): the original message had
its turn and its reply, and answering every correction again would double the history and the
usage. Such an update, like any message that begins no turn (a channel post, a message without
a sender), stops at the turns handler, so a message handler written for new messages never
gets one without a turn (``unturned="pass"`` lets them through; ``turn_of(context)`` is then
None). ``edits="turn"`` makes an edit a turn of its own, answered in reply to the edited
message. Updates that carry no message (callback queries, inline queries, member updates...)
begin no turn and always go on to the bot's handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal, Unpack

from telegram import Message, Update
from telegram.ext import Application, ApplicationHandlerStop, CallbackContext, TypeHandler

from ..client import AsyncStore
from ..errors import InvalidInput
from ..models import Turn
from ._turns import DEFAULT_REFUSAL, TurnOptions
from ._turns import TelegramTurns as _Turns

__all__ = ["DEFAULT_REFUSAL", "TURN_ATTRIBUTE", "TelegramTurns", "current_turn", "turn_of"]

# The attribute of the update's CallbackContext that holds its Turn. python-telegram-bot makes
# one context per update and hands it to the handlers of every group, and a context takes
# custom attributes (unlike user_data/chat_data, which outlive the update and are shared by a
# user's concurrent updates).
TURN_ATTRIBUTE = "sessionkeeper_turn"
Context = CallbackContext[Any, Any, Any, Any]


def turn_of(context: Context) -> Turn | None:
    """The ``Turn`` ``TelegramTurns`` began for the update being handled, or None (an update
    that begins no turn: no message, an edit, a channel post)."""
    turn = getattr(context, TURN_ATTRIBUTE, None)
    return turn if isinstance(turn, Turn) else None


def current_turn(context: Context) -> Turn:
    """The ``Turn`` ``TelegramTurns`` began for the update being handled."""
    turn = turn_of(context)
    if turn is None:
        raise InvalidInput(
            "no turn for this update: install TelegramTurns in a group before this handler's"
            " (turns.install(application)), and handle messages that have a sender"
        )
    return turn


class TelegramTurns(_Turns[Update, Message]):
    """Begins a turn for each new message with a sender (``update.message``), in a
    ``TypeHandler(Update, ...)`` of an early group: admitted, the ``Turn`` is available to the
    later groups' handlers as ``current_turn(context)``; refused by the rate limit, the user is
    answered with ``refusal`` (fields ``{retry_in}``, ``{retry_at}``, ``{window}``) and
    ``ApplicationHandlerStop`` ends the update's handling. ``reply(update, turn, reply, ...)``
    finishes the turn and answers with ``update.message.reply_text``. Needs a
    ``store.AsyncStore``.

    ``edits``: ``"ignore"`` (default), an edited message begins no turn; ``"turn"``, it begins
    one like a new message. ``unturned``: what happens to a message-carrying update that begins
    no turn (an ignored edit, a channel post, a message without a sender): ``"stop"`` (default)
    ends its handling here, ``"pass"`` hands it on to the later groups without a turn."""

    def __init__(
        self,
        db: AsyncStore,
        *,
        edits: Literal["ignore", "turn"] = "ignore",
        unturned: Literal["stop", "pass"] = "stop",
        **options: Unpack[TurnOptions],
    ) -> None:
        super().__init__(db, **options)
        if edits not in ("ignore", "turn"):
            raise InvalidInput(f'edits must be "ignore" or "turn", not {edits!r}', field="edits")
        if unturned not in ("stop", "pass"):
            raise InvalidInput(
                f'unturned must be "stop" or "pass", not {unturned!r}', field="unturned"
            )
        self.edits = edits
        self.unturned = unturned

    def handler(self) -> TypeHandler[Update, Context, None]:
        """The handler to add to a group that runs before the bot's own (``install`` does)."""
        return TypeHandler(Update, self.begin_update)

    def install(
        self, application: Application[Any, Any, Any, Any, Any, Any], group: int = -1
    ) -> None:
        application.add_handler(self.handler(), group=group)

    def turn_message(self, update: Update) -> Message | None:
        """The message of ``update`` that begins a turn: a new one, or an edit with
        ``edits="turn"``; None for any other update."""
        message = update.message
        if message is None and self.edits == "turn":
            message = update.edited_message
        return message if message is not None and message.from_user is not None else None

    async def begin_update(self, update: Update, context: Context) -> None:
        message = self.turn_message(update)
        if message is None or message.from_user is None:
            if self.unturned == "stop" and _carries_a_message(update):
                raise ApplicationHandlerStop
            return
        turn = await self.admit(message, message.from_user)
        if turn is None:
            raise ApplicationHandlerStop
        setattr(context, TURN_ATTRIBUTE, turn)

    def message_of(self, event: Update) -> Message:
        message = self.turn_message(event)
        if message is None:
            raise InvalidInput("the update holds no message that began a turn to reply to")
        return message

    def answer(self, message: Message, text: str, **send: Any) -> Awaitable[Any]:
        return message.reply_text(text, **send)


def _carries_a_message(update: Update) -> bool:
    """Whether ``update`` holds a message that python-telegram-bot's ``MessageHandler`` would
    handle (new or edited; private, group, channel or business), as opposed to a callback
    query's message, which is only the message its button was on."""
    return any(
        message is not None
        for message in (
            update.message,
            update.edited_message,
            update.channel_post,
            update.edited_channel_post,
            update.business_message,
            update.edited_business_message,
        )
    )
