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
import logging
import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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
from ..errors import DatabaseUnavailable, InvalidInput
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
Entry = tuple[str, str, str]  # a row: (kind, name, key)
log = logging.getLogger(__name__)
# How far this host's clock may run ahead of the database's before the first statement tells
# the difference: a copy's beginning is put this much earlier (dropping more, never less).
CLOCK_MARGIN = 1.0

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
    ``update_interval`` seconds, and when the application shuts down) is written at once, in its
    own transaction. One that fails with ``DatabaseUnavailable`` (raised, so PTB hands it to the
    error handlers) is kept, the newest per entry, and stored with the next write that succeeds
    or at ``flush``. A user's data from before the user's erasure (``forget_user``,
    ``sessionkeeper forget``) is never written back: every write of a user's row checks, in its
    own statement, the erasure's record against the moment this process's copy of the entry
    began (the user's first update, the load, one round before PTB hands it over), and is
    dropped (logged) when the erasure is newer; PTB's copy is cleared at the user's next update
    (``refresh_user_data``, which claims an empty row at the user's first update). Values must
    be what
    JSON reads back equal: dicts with str keys, lists, str, int, float (finite), bool, None;
    anything else (a tuple, a set, an int dict key, a datetime, an object, a NUL character)
    raises ``NotJSON`` when stored, which PTB hands to the error handlers. The store is not owned:
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
        # Rows of users (owner_ids) this process loaded, claimed or wrote: gone later means
        # erased.
        self._stored: set[Entry] = set()
        # Rows found erased: PTB's copy is cleared at the user's next update, never written.
        self._erased: set[Entry] = set()
        # Writes not stored yet (the database was unavailable), the newest per entry.
        self._unsaved: dict[Entry, _Write] = {}
        self._writing: set[Entry] = set()
        # When this process's copy of a user's entry began, or was last found clean (no erasure
        # of the user since), by the database's clock (epoch seconds): see ``_begins``.
        self._since: dict[Entry, float] = {}
        self._offset: float | None = None  # the database's clock minus this host's

    def _params(self, entry: Entry, **more: object) -> dict[str, object]:
        kind, name, key = entry
        return {"namespace": self.namespace, "kind": kind, "name": name, "key": key, **more}

    async def _load(self, kind: str, name: str = "") -> dict[str, Any]:
        plan = _sql.steps(
            QUERIES, ("tp_load", {"namespace": self.namespace, "kind": kind, "name": name})
        )
        return {row["key"]: row["data"] for row in await self.db.execute(plan)}

    def _loaded(self, kind: str, name: str, keys: list[str]) -> None:
        """Rows of users read at start: this process knows they exist (see ``_write``), and
        its copy of them begins now."""
        for key in keys:
            self._stored.add((kind, name, key))
            self._begins((kind, name, key))

    async def _put(
        self, kind: str, key: str, value: object, *, name: str = "", owners: tuple[int, ...] = ()
    ) -> None:
        data = _jsonb(value, f"{kind}[{key}]" if key else kind)
        entry = (kind, name, key)
        if owners:  # first seen here: changed at the earliest one round before
            self._begins(entry, back=self.update_interval)
        await self._save(_Write(entry, data, tuple(str(o) for o in owners)))

    async def _drop(self, kind: str, key: str, name: str = "") -> None:
        # PTB's copy of the entry ends here: what it holds next (a conversation begun after
        # this one ended) is a new copy.
        self._since[(kind, name, key)] = self._now()
        await self._save(_Write((kind, name, key), None))

    async def _save(self, write: _Write) -> None:
        """Store ``write``, or keep it (``DatabaseUnavailable``) to store with the next write or
        at ``flush``. Kept per entry: a newer write of the entry replaces a kept one, so stale
        data is never stored over newer data."""
        self._unsaved[write.entry] = write
        try:
            await self._store(write.entry)
        except DatabaseUnavailable:
            log.warning(
                "%s not stored, the database is unavailable: kept, to store with the next"
                " write or at flush (%d entries waiting)",
                _where(write.entry),
                len(self._unsaved),
            )
            raise  # PTB hands it to the error handlers
        if self._unsaved:  # the database is back: what failed before goes now
            try:
                for entry in list(self._unsaved):
                    await self._store(entry)
            except DatabaseUnavailable:
                pass  # still kept; each was logged when it failed

    async def _store(self, entry: Entry) -> None:
        """Write the newest kept write of ``entry`` until none is left. One writer per entry:
        a write made meanwhile is taken by the writer already at it, after its own."""
        if entry in self._writing:
            return
        self._writing.add(entry)
        try:
            while (write := self._unsaved.get(entry)) is not None:
                await self._write(write)
                if self._unsaved.get(entry) is write:
                    del self._unsaved[entry]
        finally:
            self._writing.discard(entry)

    async def _write(self, write: _Write) -> None:
        entry = write.entry
        if write.data is None:
            await self.db.execute(_sql.steps(QUERIES, ("tp_drop", self._params(entry))))
            self._stored.discard(entry)
            self._erased.discard(entry)
            return
        if entry in self._erased:
            return  # the bot's copy from before the erasure (refresh_* clears it)
        # A user's row this process knew is written only if it still exists.
        mode = "update" if entry in self._stored else "put"
        outcome = await self._call(entry, mode, write.data, write.owners)
        if outcome == "written":
            if write.owners:
                self._stored.add(entry)
        else:  # "gone" or "erased"
            self._forgotten(entry, write)

    async def _call(self, entry: Entry, mode: str, data: Jsonb, owners: tuple[str, ...]) -> str:
        """One ``sk_telegram_write``; returns its outcome. A user's row found not erased: the
        entry's copy is clean up to the moment of the check, its new beginning."""
        since = self._since.get(entry) if owners else None
        params = self._params(
            entry,
            channel=self.channel,
            owner_ids=list(owners),
            data=data,
            mode=mode,
            since=None if since is None else datetime.fromtimestamp(since, UTC),
        )
        row = (await self.db.execute(_sql.steps(QUERIES, ("tp_write", params))))[0]
        checked: datetime = row["checked_at"]
        self._offset = checked.timestamp() - time.time()
        outcome = str(row["outcome"])
        if owners and (outcome != "erased" or mode == "claim"):  # a claim's copy starts anew
            self._since[entry] = checked.timestamp()
        return outcome

    def _begins(self, entry: Entry, back: float = 0) -> None:
        """This process's copy of a user's entry begins now (``back`` seconds earlier, for
        data PTB hands over at its next round), by the database's clock as far as this process
        knows it: a write of it is dropped if the user is erased after that."""
        if entry not in self._since:
            self._since[entry] = self._now() - back

    def _now(self) -> float:
        """Now by the database's clock, as the last statement showed it (its check time, read
        here a little later: earlier than the truth, never later), else by this host's with a
        margin."""
        offset = -CLOCK_MARGIN if self._offset is None else self._offset
        return time.time() + offset

    def _forgotten(self, entry: Entry, write: _Write | None = None) -> None:
        """``entry``'s row was erased (``forget_user``) since this process's copy began."""
        dropped = " (a write of it is dropped)" if write is not None else ""
        log.info("%s was erased: the bot's copy is not written back%s", _where(entry), dropped)
        self._stored.discard(entry)
        self._erased.add(entry)
        if write is None or self._unsaved.get(entry) is write:
            self._unsaved.pop(entry, None)

    async def _refresh(self, entry: Entry, data: Data) -> None:
        """Before the handlers of a user's update: clear ``data`` (PTB's copy in memory) if
        the user was erased, and claim a row for a user's entry not stored yet, so that an
        erasure before PTB's next round is seen too. Only the copy's beginning is noted while
        writes wait for the database: the update does not wait for it too (the writes check)."""
        self._begins(entry)
        if self._unsaved:
            return
        try:
            outcome = await self._call(entry, "claim", Jsonb({}), (entry[2],))
        except DatabaseUnavailable:
            return  # the bot goes on from memory
        if outcome == "erased" or (outcome == "claimed" and entry in self._stored):
            self._forgotten(entry)  # a record newer than the copy, or its row gone
        if entry in self._erased:
            data.clear()
            self._erased.discard(entry)  # what the user does from now on is new data
        self._stored.add(entry)

    async def get_user_data(self) -> dict[int, Data]:
        loaded = await self._load("user_data")
        self._loaded("user_data", "", list(loaded))
        return {int(key): dict(data) for key, data in loaded.items()}

    async def get_chat_data(self) -> dict[int, Data]:
        loaded = await self._load("chat_data")
        self._loaded("chat_data", "", [key for key in loaded if int(key) > 0])
        return {int(key): dict(data) for key, data in loaded.items()}

    async def get_bot_data(self) -> Data:
        return dict((await self._load("bot_data")).get("", {}))

    async def get_callback_data(self) -> CDCData | None:
        stored = (await self._load("callback_data")).get("")
        if stored is None:
            return None
        buttons, queries = stored
        return [(uuid, stamp, dict(data)) for uuid, stamp, data in buttons], dict(queries)

    async def get_conversations(self, name: str) -> ConversationDict:
        rows = await self._load("conversation", name)
        loaded = {tuple(json.loads(key)): state for key, state in rows.items()}
        owned = [_conversation_key(key) for key in loaded if _conversation_owners(key)]
        self._loaded("conversation", name, owned)
        return loaded

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        text = _conversation_key(key)
        if new_state is None:
            await self._drop("conversation", text, name)
            return
        owners = _conversation_owners(key)
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
        """Called by PTB before the handlers of each update of the user: its data in memory
        is cleared when the user was erased meanwhile (``forget_user``, by any process). One
        statement: the user's row is claimed (first update) or checked (later ones)."""
        await self._refresh(("user_data", "", str(user_id)), user_data)

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        """As ``refresh_user_data``, for a private chat (erased with its user)."""
        if chat_id > 0:
            await self._refresh(("chat_data", "", str(chat_id)), chat_data)

    async def refresh_bot_data(self, bot_data: Data) -> None:
        """Nothing: one process owns a namespace's bot_data, loaded once at start."""

    async def flush(self) -> None:
        """Store the writes kept while the database was unavailable (PTB calls it at shutdown,
        after its last ``update_*``); what still fails is logged as lost."""
        try:
            for entry in list(self._unsaved):
                await self._store(entry)
        except DatabaseUnavailable:
            log.error(
                "python-telegram-bot persistence: the database is unavailable at flush, %d"
                " entries not stored are lost when the bot exits: %s",
                len(self._unsaved),
                ", ".join(_where(entry) for entry in self._unsaved),
            )


@dataclass(frozen=True, eq=False)
class _Write:
    """A write PTB asked for: ``data`` None drops the row; ``owners``, the users it is about."""

    entry: Entry
    data: Jsonb | None
    owners: tuple[str, ...] = ()


def _where(entry: Entry) -> str:
    kind, name, key = entry
    return f"{kind}{f' {name}' if name else ''}{f'[{key}]' if key else ''}"


def _conversation_key(key: ConversationKey | tuple[Any, ...]) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def _conversation_owners(key: ConversationKey | tuple[Any, ...]) -> tuple[int, ...]:
    """The users a conversation is keyed by (a group's chat id is negative)."""
    return tuple({part: None for part in key if isinstance(part, int) and part > 0})


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
