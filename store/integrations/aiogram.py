"""aiogram 3: a middleware that begins a turn for every incoming message, and an FSM storage on
the store's database (``pip install 'sessionkeeper[aiogram]'``).

    turns = TurnMiddleware(db, refusal="Slow down: try again in {retry_in}.")
    dp.message.outer_middleware(turns)

    @dp.message()
    async def chat(message: Message, turn: Turn) -> None:
        reply, usage = await my_model(turn.history, message.text)
        await turns.reply(message, turn, reply, input_tokens=usage.input, ...)

A rate-limited user gets the refusal once per rate-limit window (later refused messages are
dropped quietly) and the handler is not called. ``exempt=`` takes aiogram filters (``Command
("start")``, ``StateFilter(Form)``, ``F...``) for messages the rate limit does not apply to.
``Dispatcher(storage=
SessionkeeperStorage(db))`` keeps aiogram's FSM states and data in the store's database, where
erasure (``forget_user``) removes them with the user.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Unpack

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.handler import FilterObject
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.types import Message, TelegramObject, Update
from psycopg.types.json import Jsonb

from .. import core
from ..client import AsyncStore
from ..errors import InvalidInput
from ..queries import parse
from . import _sql
from ._turns import DEFAULT_REFUSAL, Exempt, TelegramTurns, TurnOptions

__all__ = ["DEFAULT_REFUSAL", "FSMDataNotDictLike", "SessionkeeperStorage", "TurnMiddleware"]

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]
# A NUL escape in JSON text (not an escaped backslash followed by "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
QUERIES = parse(resources.files(__package__).joinpath("aiogram.sql").read_text(encoding="utf-8"))


class FSMDataNotDictLike(InvalidInput, DataNotDictLikeError):
    """FSM data that is not a mapping: both the store's ``InvalidInput`` and the
    ``DataNotDictLikeError`` aiogram's own storages raise, so either ``except`` catches it."""

    def __init__(self, message: str) -> None:
        InvalidInput.__init__(self, message, rule="type")
        self.message = message

    def __str__(self) -> str:
        return self.message


class TurnMiddleware(TelegramTurns[Message, Message], BaseMiddleware):
    """An outer middleware (``dp.message.outer_middleware(...)``, or on ``dp.update``) that
    runs ``begin_turn`` for each message with a sender, before filters and handlers.

    Admitted: the handler gets the ``Turn`` as ``turn`` (handler data key ``data_key``).
    Refused by the rate limit: no handler runs, and the first refusal of the window is answered
    with ``refusal`` (fields ``{retry_in}``, ``{retry_at}``, ``{window}``); the later ones get
    no answer. ``exempt``: a filter as a handler takes (aiogram's ``Command``, ``StateFilter``,
    a magic ``F`` filter, or a callable given the handler data it names, e.g. ``raw_state``);
    a message it passes begins a turn that the rate limit does not count. Messages without a
    sender (channel posts) pass through without a turn. ``reply(message, turn, reply, ...)``
    finishes the turn and answers with ``message.answer``.
    """

    def __init__(
        self,
        db: AsyncStore,
        *,
        data_key: str = "turn",
        exempt: Exempt | None = None,
        **options: Unpack[TurnOptions],
    ) -> None:
        super().__init__(db, exempt=exempt, **options)
        self.data_key = data_key
        # Called as aiogram calls a handler's filters: given the handler data they name.
        self._exempt = None if self.exempt is None else FilterObject(self.exempt)

    async def exempts(self, event: object, *context: Any) -> bool:
        """Whether ``exempt`` passes ``event`` (a message), given the handler data
        (``context[0]``) as aiogram gives a handler's filters."""
        if self._exempt is None:
            return False
        data: dict[str, Any] = context[0] if context else {}
        return bool(await self._exempt.call(event, **data))

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        message = event.message if isinstance(event, Update) else event
        if not isinstance(message, Message) or message.from_user is None:
            return await handler(event, data)
        exempt = await self.exempts(message, data)
        turn = await self.admit(message, message.from_user, exempt=exempt)
        if turn is None:
            return None
        data[self.data_key] = turn
        return await handler(event, data)

    def message_of(self, event: Message) -> Message:
        return event

    def answer(self, message: Message, text: str, **send: Any) -> Awaitable[Any]:
        return message.answer(text, **send)


class SessionkeeperStorage(BaseStorage):
    """aiogram's FSM storage in the store's database (table ``aiogram_fsm_states``).

    ``Dispatcher(storage=SessionkeeperStorage(db))`` with an ``AsyncStore``; ``channel`` is the
    store channel of the users (for erasure). The storage does not own the store:
    ``close()`` leaves it open for the bot to close.
    """

    def __init__(self, db: AsyncStore, *, channel: str = "telegram") -> None:
        if not isinstance(db, AsyncStore):
            raise InvalidInput(
                f"SessionkeeperStorage needs a store.AsyncStore (got {type(db).__name__})"
            )
        self.db = db
        self.channel = channel

    def _key(self, key: StorageKey) -> dict[str, object]:
        return {
            "bot_id": key.bot_id,
            "chat_id": key.chat_id,
            "telegram_user_id": key.user_id,
            "thread_id": key.thread_id or 0,
            "business_connection_id": key.business_connection_id or "",
            "destiny": key.destiny,
            "channel": self.channel,
        }

    async def _run(self, *steps: tuple[str, Mapping[str, object]]) -> core.Rows:
        return await self.db.execute(_sql.steps(QUERIES, *steps))

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        params = {**self._key(key), "state": value}
        if value is None:
            await self._run(("fsm_set_state", params), ("fsm_drop_if_empty", params))
        else:
            await self._run(("fsm_set_state", params))

    async def get_state(self, key: StorageKey) -> str | None:
        rows = await self._run(("fsm_get", self._key(key)))
        return rows[0]["state"] if rows else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        params = {**self._key(key), "data": _jsonb(data)}
        if data:
            await self._run(("fsm_set_data", params))
        else:
            await self._run(("fsm_set_data", params), ("fsm_drop_if_empty", params))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        rows = await self._run(("fsm_get", self._key(key)))
        return dict(rows[0]["data"]) if rows else {}

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        value = _jsonb(data)
        if not data:
            # Nothing to merge: read only, so a key without a row keeps none (fsm_drop_if_empty).
            return await self.get_data(key)
        rows = await self._run(("fsm_update_data", {**self._key(key), "data": value}))
        return dict(rows[0]["data"])

    async def close(self) -> None:
        """Nothing to release: the store belongs to the bot."""


def _jsonb(data: Mapping[str, Any]) -> Jsonb:
    """FSM data as JSON, checked here: bad data raises ``InvalidInput`` and writes nothing."""
    if not isinstance(data, Mapping):
        raise FSMDataNotDictLike(f"FSM data must be a mapping, not {type(data).__name__}")
    try:
        text = json.dumps(dict(data), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"FSM data must be JSON-serialisable: {exc}") from None
    if _NUL_ESCAPE.search(text):
        raise InvalidInput("FSM data must not hold NUL characters (PostgreSQL refuses them)")
    return Jsonb(dict(data), dumps=lambda _: text)
