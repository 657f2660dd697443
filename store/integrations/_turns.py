"""What the Telegram integrations (aiogram, python-telegram-bot) share, free of both: beginning
and finishing a turn for a Telegram user on an ``AsyncStore``, and the refusal text."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ..client import AsyncStore
from ..errors import InvalidInput, StoreError
from ..models import Appended, Turn

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


class TelegramTurns:
    """Turns of Telegram users on an ``AsyncStore`` (both frameworks are asyncio)."""

    def __init__(
        self,
        db: AsyncStore,
        *,
        refusal: str = DEFAULT_REFUSAL,
        channel: str = "telegram",
        history_pairs: int | None = None,
    ) -> None:
        if not isinstance(db, AsyncStore):
            raise InvalidInput(
                f"the Telegram integrations need a store.AsyncStore (got {type(db).__name__}):"
                " the frameworks run on asyncio, and a Store would block their event loop"
            )
        try:
            refusal.format(retry_in="1 minute", retry_at=datetime.now(UTC), window=60)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"refusal: unknown field or bad format {exc}; use {{retry_in}}, {{retry_at}},"
                " {window}"
            ) from None
        self.db = db
        self.refusal = refusal
        self.channel = channel
        self.history_pairs = history_pairs

    async def begin(self, telegram_user_id: int, name: str | None) -> Turn:
        return await self.db.begin_turn(
            self.channel,
            telegram_user_id,
            display_name=name,
            history_pairs=self.history_pairs,
        )

    def refusal_for(self, turn: Turn) -> str:
        return refusal_text(self.refusal, turn)

    async def finish_and_send(
        self,
        turn: Turn,
        user_message: str,
        reply: str,
        send: Callable[[str], Awaitable[Any]],
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
    ) -> Appended:
        """Store the turn, then send the reply: a user who saw the reply finds it in the
        history of the next turn. When storing fails (``StoreError``: a message the store
        refuses, the database gone) the reply is still sent, then the error raised."""
        try:
            appended = await self.db.finish_turn(
                turn,
                user_message,
                reply,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
            )
        except StoreError:
            await send(reply)
            raise
        await send(reply)
        return appended
