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
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from telegram import Message, Update
from telegram.ext import Application, ApplicationHandlerStop, CallbackContext, TypeHandler

from ..errors import InvalidInput
from ..models import Turn
from ._turns import DEFAULT_REFUSAL
from ._turns import TelegramTurns as _Turns

__all__ = ["DEFAULT_REFUSAL", "TURN_ATTRIBUTE", "TelegramTurns", "current_turn"]

# The attribute of the update's CallbackContext that holds its Turn. python-telegram-bot makes
# one context per update and hands it to the handlers of every group, and a context takes
# custom attributes (unlike user_data/chat_data, which outlive the update and are shared by a
# user's concurrent updates).
TURN_ATTRIBUTE = "sessionkeeper_turn"
Context = CallbackContext[Any, Any, Any, Any]


def current_turn(context: Context) -> Turn:
    """The ``Turn`` ``TelegramTurns`` began for the update being handled."""
    turn = getattr(context, TURN_ATTRIBUTE, None)
    if not isinstance(turn, Turn):
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
    ``store.AsyncStore``."""

    def handler(self) -> TypeHandler[Update, Context, None]:
        """The handler to add to a group that runs before the bot's own (``install`` does)."""
        return TypeHandler(Update, self.begin_update)

    def install(
        self, application: Application[Any, Any, Any, Any, Any, Any], group: int = -1
    ) -> None:
        application.add_handler(self.handler(), group=group)

    async def begin_update(self, update: Update, context: Context) -> None:
        message = update.message
        if message is None or message.from_user is None:
            return
        turn = await self.admit(message, message.from_user)
        if turn is None:
            raise ApplicationHandlerStop
        setattr(context, TURN_ATTRIBUTE, turn)

    def message_of(self, event: Update) -> Message:
        if event.message is None:
            raise InvalidInput("the update holds no message to reply to")
        return event.message

    def answer(self, message: Message, text: str, **send: Any) -> Awaitable[Any]:
        return message.reply_text(text, **send)
