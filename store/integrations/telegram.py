"""python-telegram-bot 21+: a handler in an early group that begins a turn for every incoming
message, and a finish helper (``pip install 'sessionkeeper[telegram]'``).

    turns = TelegramTurns(db, refusal="Slow down: try again in {retry_in}.")
    turns.install(application)  # a TypeHandler(Update, ...) in group -1

    async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        turn = current_turn(context)
        reply, usage = await my_model(turn.history, update.message.text)
        await turns.reply(update, turn, reply, input_tokens=usage.input, ...)

A rate-limited user gets the refusal once per rate-limit window (later refused messages are
dropped quietly), and the update goes no further (``ApplicationHandlerStop``): no handler of a
later group runs. ``exempt=filters.COMMAND`` (any python-telegram-bot filter, or a callable
given the update and the context) names messages the rate limit does not apply to.

Edited messages do not begin a turn by default (``edits="ignore"``): the original message had
its turn and its reply, and answering every correction again would double the history and the
usage. Such an update, like any message that begins no turn (a channel post, a message without
a sender), stops at the turns handler, so a message handler written for new messages never
gets one without a turn (``unturned="pass"`` lets them through; ``turn_of(context)`` is then
None). ``edits="turn"`` makes an edit a turn of its own, answered in reply to the edited
message. Updates that carry no message (callback queries, inline queries, member updates...)
begin no turn and always go on to the bot's handlers.

``SessionkeeperPersistence(db)`` is a ``telegram.ext.BasePersistence`` keeping user_data,
chat_data, bot_data, callback_data and ConversationHandler states in the store's database as
JSON (never pickle): ``Application.builder().persistence(SessionkeeperPersistence(db))``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, Unpack

from psycopg.types.json import Jsonb
from telegram import Message, Update
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    BasePersistence,
    CallbackContext,
    PersistenceInput,
    TypeHandler,
)
from telegram.ext.filters import BaseFilter

from ..client import AsyncStore
from ..errors import InvalidInput
from ..models import Turn
from ..queries import parse
from . import _sql
from ._turns import DEFAULT_REFUSAL, Exempt, TurnOptions
from ._turns import TelegramTurns as _Turns

__all__ = [
    "DEFAULT_REFUSAL",
    "TURN_ATTRIBUTE",
    "NotJSON",
    "SessionkeeperPersistence",
    "TelegramTurns",
    "current_turn",
    "turn_of",
]

if TYPE_CHECKING:  # PTB's type aliases live in a private module: annotations only
    from telegram.ext._utils.types import CDCData, ConversationDict, ConversationKey

QUERIES = parse(resources.files(__package__).joinpath("telegram.sql").read_text(encoding="utf-8"))
Data = dict[str, Any]

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
    later groups' handlers as ``current_turn(context)``; refused by the rate limit,
    ``ApplicationHandlerStop`` ends the update's handling, and the first refusal of the window
    is answered with ``refusal`` (fields ``{retry_in}``, ``{retry_at}``, ``{window}``), the later
    ones not at all. ``exempt``: a python-telegram-bot filter (``filters.COMMAND``) or a
    callable ``(update, context) -> bool`` (may be async); an update it passes begins a turn
    that the rate limit does not count. ``reply(update, turn, reply, ...)``
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
        exempt: BaseFilter | Exempt | None = None,
        **options: Unpack[TurnOptions],
    ) -> None:
        if isinstance(exempt, BaseFilter):
            exempt = _checking(exempt)
        super().__init__(db, exempt=exempt, **options)
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
        exempt = await self.exempts(update, context)
        turn = await self.admit(message, message.from_user, exempt=exempt)
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


def _checking(exempt: BaseFilter) -> Exempt:
    """A filter as a callable of (update, context), as a MessageHandler checks it."""

    def check(update: Update, context: Context) -> bool:
        return bool(exempt.check_update(update))

    return check


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


class NotJSON(InvalidInput):
    """A value the persistence cannot store as JSON and read back equal: raised when it is
    stored (``update_*``), naming where the value is; nothing of that entry is written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rule="json")


class SessionkeeperPersistence(BasePersistence[Data, Data, Data]):
    """python-telegram-bot's persistence in the store's database (table
    ``telegram_persistence``), as JSON.

    ``namespace`` separates the persistences of several bots on one database; ``channel`` is
    the store channel of the Telegram users (for erasure and export). ``store_data`` and
    ``update_interval`` are PTB's. Every ``update_*``/``drop_*`` call PTB makes (every
    ``update_interval`` seconds, and when the application stops) is written at once, in its own
    transaction, so ``flush`` has nothing left to write. Values must be what JSON reads back
    equal: dicts with str keys, lists, str, int, float (finite), bool, None; anything else
    (a tuple, a set, an int dict key, a datetime, an object, a NUL character) raises
    ``NotJSON`` when stored, which PTB hands to the error handlers. The store is not owned:
    it opens on first use (PTB loads the persistence in ``initialize``, before ``post_init``)
    and the bot closes it (``post_shutdown`` runs after PTB's last write).
    """

    def __init__(
        self,
        db: AsyncStore,
        *,
        namespace: str = "default",
        channel: str = "telegram",
        store_data: PersistenceInput | None = None,
        update_interval: float = 60,
    ) -> None:
        if not isinstance(db, AsyncStore):
            raise InvalidInput(
                f"SessionkeeperPersistence needs a store.AsyncStore (got {type(db).__name__})"
            )
        if not isinstance(namespace, str) or not namespace:
            raise InvalidInput("namespace must be a non-empty str", field="namespace")
        super().__init__(store_data=store_data, update_interval=update_interval)
        self.db = db
        self.namespace = namespace
        self.channel = channel

    async def _load(self, kind: str, name: str = "") -> dict[str, Any]:
        plan = _sql.steps(
            QUERIES, ("tp_load", {"namespace": self.namespace, "kind": kind, "name": name})
        )
        return {row["key"]: row["data"] for row in await self.db.execute(plan)}

    async def _put(
        self, kind: str, key: str, value: object, *, name: str = "", owners: tuple[int, ...] = ()
    ) -> None:
        data = _jsonb(value, f"{kind}[{key}]" if key else kind)
        params = {
            "namespace": self.namespace,
            "kind": kind,
            "name": name,
            "key": key,
            "channel": self.channel,
            "owner_ids": [str(owner) for owner in owners],
            "data": data,
        }
        await self.db.execute(_sql.steps(QUERIES, ("tp_put", params)))

    async def _drop(self, kind: str, key: str, name: str = "") -> None:
        params = {"namespace": self.namespace, "kind": kind, "name": name, "key": key}
        await self.db.execute(_sql.steps(QUERIES, ("tp_drop", params)))

    async def get_user_data(self) -> dict[int, Data]:
        return {int(key): dict(data) for key, data in (await self._load("user_data")).items()}

    async def get_chat_data(self) -> dict[int, Data]:
        return {int(key): dict(data) for key, data in (await self._load("chat_data")).items()}

    async def get_bot_data(self) -> Data:
        return dict((await self._load("bot_data")).get("", {}))

    async def get_callback_data(self) -> CDCData | None:
        stored = (await self._load("callback_data")).get("")
        if stored is None:
            return None
        buttons, queries = stored
        return [(uuid, stamp, dict(data)) for uuid, stamp, data in buttons], dict(queries)

    async def get_conversations(self, name: str) -> ConversationDict:
        return {
            tuple(json.loads(key)): state
            for key, state in (await self._load("conversation", name)).items()
        }

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        text = json.dumps(list(key), separators=(",", ":"))
        if new_state is None:
            await self._drop("conversation", text, name)
            return
        # The users a conversation is keyed by (a group's chat id is negative).
        owners = tuple({part: None for part in key if isinstance(part, int) and part > 0})
        await self._put("conversation", text, new_state, name=name, owners=owners)

    async def update_user_data(self, user_id: int, data: Data) -> None:
        await self._put("user_data", str(user_id), data, owners=(user_id,))

    async def update_chat_data(self, chat_id: int, data: Data) -> None:
        # A private chat's id is its user's id; groups and channels (negative ids) have no owner.
        await self._put("chat_data", str(chat_id), data, owners=(chat_id,) if chat_id > 0 else ())

    async def update_bot_data(self, data: Data) -> None:
        await self._put("bot_data", "", data)

    async def update_callback_data(self, data: CDCData) -> None:
        buttons, queries = data
        await self._put("callback_data", "", [[list(b) for b in buttons], queries])

    async def drop_chat_data(self, chat_id: int) -> None:
        await self._drop("chat_data", str(chat_id))

    async def drop_user_data(self, user_id: int) -> None:
        await self._drop("user_data", str(user_id))

    async def refresh_user_data(self, user_id: int, user_data: Data) -> None:
        """Nothing: one process owns a namespace's data, loaded once at start (as PTB's
        own persistences)."""

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        """Nothing (see ``refresh_user_data``)."""

    async def refresh_bot_data(self, bot_data: Data) -> None:
        """Nothing (see ``refresh_user_data``)."""

    async def flush(self) -> None:
        """Nothing: every update was written when PTB made it."""


def _jsonb(value: object, where: str) -> Jsonb:
    """``value`` as JSON, checked to read back equal; ``NotJSON`` names what is not."""
    _check(value, where)
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return Jsonb(value, dumps=lambda _: text)


def _check(value: object, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and "\x00" in value:
            raise NotJSON(f"{where} holds a NUL character (PostgreSQL's JSON refuses it)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(f"{where} is {value}: JSON has no NaN or infinity")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(
                    f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are str,"
                    " and it would come back as a str"
                )
            _check(key, f"{where} key")
            _check(item, f"{where}[{key!r}]")
        return
    raise NotJSON(
        f"{where} is a {type(value).__name__}, which JSON cannot hold"
        + (" (it would come back as a list)" if isinstance(value, tuple) else "")
    )
