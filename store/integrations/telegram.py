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

from typing import Any

from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, CallbackContext, TypeHandler

from ..client import AsyncStore
from ..errors import InvalidInput
from ..models import Appended, Turn
from ._turns import DEFAULT_REFUSAL, display_name
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


class TelegramTurns(_Turns):
    """Begins a turn for each new message with a sender (``update.message``), in a
    ``TypeHandler(Update, ...)`` of an early group: admitted, the ``Turn`` is available to the
    later groups' handlers as ``current_turn(context)``; refused by the rate limit, the user is
    answered with ``refusal`` (fields ``{retry_in}``, ``{retry_at}``, ``{window}``) and
    ``ApplicationHandlerStop`` ends the update's handling. Needs a ``store.AsyncStore``."""

    def __init__(
        self,
        db: AsyncStore,
        *,
        refusal: str = DEFAULT_REFUSAL,
        channel: str = "telegram",
        history_pairs: int | None = None,
    ) -> None:
        super().__init__(db, refusal=refusal, channel=channel, history_pairs=history_pairs)

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
        sender = message.from_user
        turn = await self.begin(sender.id, display_name(sender.first_name, sender.last_name))
        if not turn.allowed:
            await message.reply_text(self.refusal_for(turn))
            raise ApplicationHandlerStop
        setattr(context, TURN_ATTRIBUTE, turn)

    async def reply(
        self,
        update: Update,
        turn: Turn,
        reply: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        user_message: str | None = None,
        **send: Any,
    ) -> Appended:
        """Finish the turn and answer: ``finish_turn`` stores the user's message (its text or
        caption, or ``user_message``) and ``reply`` with the token usage, then
        ``update.message.reply_text(reply, **send)`` sends it. If storing fails the reply is
        still sent, then the ``StoreError`` is raised."""
        message = update.message
        if message is None:
            raise InvalidInput("the update holds no message to reply to")
        text = user_message if user_message is not None else message.text or message.caption
        return await self.finish_and_send(
            turn,
            text or "",
            reply,
            lambda reply: message.reply_text(reply, **send),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
        )
