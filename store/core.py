"""The store's one core, shared by ``Store`` (sync) and ``AsyncStore`` (asyncio).

Each operation is a plain function that checks its input at once (so bad input never costs a
connection) and returns a *plan*: a generator that yields ``Step``s (a named statement from
``queries.sql`` and its parameters), receives each step's rows, and returns the result. The
shells in ``client.py`` only execute steps; every decision and every statement lives here or in
the SQL. Most plans are one step; ``create_link_code`` draws again on a clash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, cast
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from . import errors, models, validate
from .config import StoreConfig
from .connection import redact
from .queries import QUERIES

T = TypeVar("T")
Row = dict[str, Any]
Rows = list[Row]

LINK_CODE_DRAWS = 20
FINISH_TURN_IN_DOUBT = (
    "the turn may have been stored; calling finish_turn again with the same Turn and "
    "arguments is safe: the turn is stored once"
)


@dataclass(frozen=True)
class Step:
    """One statement to run: its name in ``queries.sql`` (or in ``queries``: an integration's
    own statements) and its parameters. ``if_in_doubt`` is what the error says when the
    connection is lost after the statement was sent."""

    name: str
    params: Mapping[str, object]
    if_in_doubt: str = "it may have been applied all the same"
    queries: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def sql(self) -> str:
        return (self.queries or QUERIES)[self.name]


Plan = Generator[Step, Rows, T]


class Runner(Generic[T]):
    """Drives a plan for a shell: run ``step``, hand its rows to ``feed``, until ``step`` is
    None; then ``result`` holds the plan's value."""

    def __init__(self, plan: Plan[T]) -> None:
        self._plan = plan
        self._result: T | None = None
        self.step: Step | None = None
        self.sent: Step | None = None  # the step whose statement failed, once one did
        self._advance(lambda: next(plan))

    def __iter__(self) -> Iterator[Step]:
        while self.step is not None:
            yield self.step

    def feed(self, rows: Rows) -> None:
        self._advance(lambda: self._plan.send(rows))

    def throw(self, exc: psycopg.Error) -> None:
        """Hand the error of the current step's statement to the plan: it may run another step
        (``finish_turn`` does on a lost race), or let the error through."""
        self.sent = self.step
        self._advance(lambda: self._plan.throw(exc))

    @property
    def result(self) -> T:
        assert self.step is None, "the plan has not finished"
        return cast(T, self._result)

    def _advance(self, resume: Callable[[], Step]) -> None:
        try:
            self.step = resume()
        except StopIteration as stop:
            self.step = None
            self._result = stop.value


def translate(exc: Exception, sent: Step | None = None) -> Exception:
    """The ``StoreError`` a driver or pool error stands for (the error itself if none).
    ``sent`` is the step whose statement had been sent when the error came, if any."""
    if isinstance(exc, PoolTimeout):
        return errors.DatabaseUnavailable(f"no database connection available: {redact(str(exc))}")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return errors.ReadOnlyDatabase(
            f"{_describe(exc)}: the server is read-only (a standby, or a demoted primary); "
            "nothing was written. List every node in the URL with target_session_attrs=read-write"
        )
    if isinstance(exc, pg_errors.NoDataFound | pg_errors.ForeignKeyViolation):
        return errors.NotFound(_missing(exc))
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return errors.PermissionDenied(
            f"{_describe(exc)}: this database role may not do that; nothing was written."
            " Run the bots as a member of the bot role, with grants applied by"
            " `sessionkeeper migrate` (docs/roles.md)"
        )
    if isinstance(exc, pg_errors.CheckViolation) and _NO_PARTITION.match(
        exc.diag.message_primary or str(exc)
    ):
        return errors.PartitionMissing(
            f"{_describe(exc)}: no time partition covers this moment; nothing was written."
            " Run `sessionkeeper jobs run partition_maintenance` (docs/partitions.md)"
        )
    if isinstance(exc, pg_errors.UndefinedFunction | pg_errors.UndefinedTable):
        return errors.SchemaOutOfDate(f"{_describe(exc)}; run `sessionkeeper migrate`")
    if isinstance(
        exc,
        pg_errors.DeadlockDetected | pg_errors.SerializationFailure | pg_errors.LockNotAvailable,
    ):
        return errors.TransactionConflict(
            f"{_describe(exc)}: rolled back whole, nothing was written; trying again is safe"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        if sent is not None and connection_lost(exc):
            return errors.DatabaseUnavailable(
                f"{_describe(exc)}; the connection was lost after the statement was sent: "
                f"{sent.if_in_doubt}",
                in_doubt=True,
            )
        return errors.DatabaseUnavailable(_describe(exc))
    return exc


def connection_lost(exc: psycopg.Error) -> bool:
    """Whether the error is the connection breaking rather than the server's verdict on the
    statement (a verdict, such as a statement timeout or a shutdown, means nothing committed)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08")


def _describe(exc: Exception) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    # The server's primary message only: str(exc) adds DETAIL and CONTEXT lines (a PL/pgSQL
    # function's name and line, statement text) that are for the server's log, not the caller.
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    message = redact((primary or str(exc)).strip() or type(exc).__name__)
    return f"{message} (SQLSTATE {sqlstate})" if sqlstate else message


# A row whose partition key no partition covers (the tables have no DEFAULT partition).
_NO_PARTITION = re.compile(r'^no partition of relation "[^"]*" found for row')

# DETAIL of a foreign-key violation: Key (session_id)=(...) is not present in table "...".
_MISSING_KEY = re.compile(r"^Key \((\w+)\)=\((.*)\) is not present in table")


def _missing(exc: psycopg.Error) -> str:
    """What a NotFound says: the server's primary message (an sk_* function names what it did
    not find), or for a foreign key the missing id, never the constraint, the statement or
    the table (a partition's name means nothing to the caller)."""
    if not isinstance(exc, pg_errors.ForeignKeyViolation):
        return _describe(exc)
    found = _MISSING_KEY.match(exc.diag.message_detail or "")
    what = f"{found[1].removesuffix('_id')} {found[2]}" if found else "a row it refers to"
    return f"{redact(what)} does not exist (SQLSTATE {exc.sqlstate})"


def _single(name: str, params: Mapping[str, object], decode: Callable[[Rows], T]) -> Plan[T]:
    rows = yield Step(name, params)
    return decode(rows)


def _first(rows: Rows, missing: str) -> Row:
    if not rows:
        raise errors.NotFound(missing)
    return rows[0]


def _user(row: Row, channel: str | None = None, channel_user_id: str | None = None) -> models.User:
    return models.User(
        user_id=row["user_id"],
        channel=channel or row["channel"],
        channel_user_id=channel_user_id or row["channel_user_id"],
        person_id=row["person_id"],
        display_name=row["display_name"],
        created=row["user_created"],
    )


def _history(row: Row) -> list[models.Message]:
    """The messages of a row's parallel ``history_*`` arrays (NULL when the turn was refused),
    and who spoke each when the row names them (a shared group conversation)."""
    seqs = row["history_seqs"]
    if not seqs:
        return []
    roles = row["history_roles"]
    columns = [roles, row["history_contents"], row["history_created"], seqs]
    columns.append(row["history_extras"])
    speakers = row.get("history_speakers")
    if speakers is not None:
        columns.append(speakers)
    history = list(map(models.stored_message, *columns))
    if roles[0] == "tool":
        # The window starts after a call whose results it holds: providers refuse results
        # without their call, so they are left out too.
        start = next((i for i, role in enumerate(roles) if role != "tool"), len(roles))
        del history[:start]
    return history


# Every admitted request has the same decision, and it is immutable: shared, not built per turn
# (a frozen dataclass's __init__ is dear on the hot path, see models.stored_message).
_ADMITTED = models.RateDecision(True)


def _rate(row: Row) -> models.RateDecision:
    if row["allowed"]:
        return _ADMITTED
    return models.RateDecision(False, row["retry_at"], row["refused_window"], bool(row["notify"]))


def _rate_params(config: StoreConfig, counted: bool = True) -> dict[str, object]:
    # No cap given: admitted and counted against none (an exempt turn).
    windows, caps = config.rate_windows() if counted else ([], [])
    return {"windows": windows, "caps": caps, "durable": config.durable_rate_limits}


# -- the hot path ------------------------------------------------------------------------------


def begin_turn(
    config: StoreConfig,
    channel: str,
    channel_user_id: str | int,
    *,
    display_name: str | None = None,
    history_pairs: int | None = None,
    chat: object = None,
    rate_limit: bool = True,
    now: datetime | None = None,
) -> Plan[models.Turn]:
    """Before the model is called, in one round trip: upsert the user, decide the rate limit
    and, when admitted, find or open the current session of the conversation and read its
    last pairs. ``chat`` is where the message was written (an id, or a framework's chat
    object): None or the user's private chat is the conversation of release 0.2.0; in a group
    each member has a conversation of their own, or the group one shared conversation
    (``group_conversations``, docs/conversations.md). A refused turn's ``notify_refusal`` is
    true for the first refusal of its window only: answer that one, drop the others.
    ``rate_limit=False`` admits the turn without counting it against any cap (a message the
    bot exempts: a command, a form step)."""
    user_id = validate.identifier(channel_user_id, "channel_user_id")
    chat_id = None if chat is None else validate.chat(chat, user_id)
    params = {
        "channel": validate.channel(config, channel),
        "channel_user_id": user_id,
        "display_name": validate.optional_name(display_name, "display_name"),
        "chat_id": chat_id,
        "shared": config.group_conversations == "shared",
        "continuity": config.linked_continuity,
        "now": validate.moment(now, "now"),
        "idle": config.idle_timeout,
        "carry_pairs": config.carry_over_pairs,
        "history_pairs": validate.pairs(
            history_pairs, "history_pairs", default=config.history_pairs
        ),
        **_rate_params(config, validate.flag(rate_limit, "rate_limit")),
    }

    def decode(rows: Rows) -> models.Turn:
        row = rows[0]
        return models.Turn(
            user=_user(row, str(params["channel"]), user_id),
            rate=_rate(row),
            started_at=row["now"],
            session_id=row["session_id"],
            session_created=bool(row["session_created"]),
            history=_history(row),
            chat_id=chat_id,
        )

    return _single("begin_turn", params, decode)


def finish_turn(
    config: StoreConfig,
    turn: models.Turn | UUID | str,
    user_message: str | Mapping[str, Any],
    reply: str | Mapping[str, Any] | Sequence[Mapping[str, Any] | models.Message],
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_tokens: int = 0,
    max_pairs: int | None = None,
    now: datetime | None = None,
) -> Plan[models.Appended]:
    """After the model answered, in one round trip and one transaction: append the user's
    message and the reply, trim the history to ``max_pairs``, touch ``last_active`` and record
    the token usage. ``reply`` may be the whole exchange after the user's message, in order: the
    assistant messages that call tools (``tool_calls``), the tools' results (role ``tool``,
    ``tool_call_id``) and the final reply; every result must answer a call of this turn.
    ``turn`` is what ``begin_turn`` returned (or a session id: then the user is read from the
    session, which one node does as well, but Citus would not route)."""
    turn_id: UUID | None = None
    user_id: UUID | None = None
    if isinstance(turn, models.Turn):
        if turn.session_id is None:
            raise errors.InvalidInput("the turn was refused by the rate limit; it has no session")
        # A Turn can be built by hand: its fields are checked like any argument.
        session_id, asked_at = validate.uuid(turn.session_id, "turn.session_id"), turn.started_at
        user_id = validate.uuid(turn.user.user_id, "turn.user.user_id")
        if turn.turn_id is not None:
            turn_id = validate.uuid(turn.turn_id, "turn.turn_id")
    else:
        session_id, asked_at = validate.uuid(turn, "session_id"), None
    batch: list[object] = [
        user_message
        if isinstance(user_message, Mapping)
        else {"role": "user", "content": user_message, "timestamp": asked_at}
    ]
    exchange = False
    if isinstance(reply, str):
        batch.append({"role": "assistant", "content": reply})
    elif isinstance(reply, Mapping):
        batch.append(reply)
    elif isinstance(reply, Sequence) and reply:
        batch.extend(reply)
        exchange = True
    else:
        raise errors.InvalidInput(
            "reply must be a text, a message, or a non-empty list of messages", field="reply"
        )
    keep = 2 * validate.pairs(max_pairs, default=config.history_pairs)
    usage = {
        "input_tokens": validate.tokens(input_tokens, "input_tokens"),
        "output_tokens": validate.tokens(output_tokens, "output_tokens"),
        "cached_tokens": validate.tokens(cached_tokens, "cached_tokens"),
    }
    return _append(
        config,
        session_id,
        batch,
        now,
        keep=keep,
        usage=usage,
        turn_id=turn_id,
        user_id=user_id,
        exchange=exchange,
    )


# -- seed parity -------------------------------------------------------------------------------


def append_messages(
    config: StoreConfig,
    session_id: UUID | str,
    messages: object,
    *,
    max_pairs: int | None = None,
    now: datetime | None = None,
) -> Plan[models.Appended]:
    """Append ``{role, content, timestamp?, extra?}`` messages to a session, in order; with
    ``max_pairs``, also trim the history to that many pairs in the same statement."""
    keep = None if max_pairs is None else 2 * validate.pairs(max_pairs, default=0)
    return _append(config, validate.uuid(session_id, "session_id"), messages, now, keep=keep)


def _append(
    config: StoreConfig,
    session_id: UUID,
    messages: object,
    now: datetime | None,
    *,
    keep: int | None = None,
    usage: Mapping[str, int] | None = None,
    turn_id: UUID | None = None,
    user_id: UUID | None = None,
    exchange: bool = False,
) -> Plan[models.Appended]:
    batch = validate.messages(config, messages)
    if exchange:  # a list, checked message by message just above
        validate.tool_exchange(cast(list[object], messages))
    params = {
        "session_id": session_id,
        # Only with a Turn: append_messages_by_session reads the user from the session.
        **({} if user_id is None else {"user_id": user_id}),
        "roles": batch.roles,
        "contents": batch.contents,
        "created": batch.created,
        # "" for none: an array of only NULLs would be sent without a type.
        "extras": [extra or "" for extra in batch.extras],
        "now": validate.moment(now, "now"),
        "keep": keep,
        "track_usage": usage is not None,
        **(usage or {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}),
    }
    params["turn_id"] = turn_id and _request_key(turn_id, params)
    # A plain function up to here, so that bad input is refused before a connection is taken.
    return _append_steps(session_id, params, retryable=turn_id is not None)


def _append_steps(
    session_id: UUID, params: dict[str, Any], *, retryable: bool
) -> Plan[models.Appended]:
    user_id = params.get("user_id")
    # With the user, every part of the statement names it (it routes on Citus); with a session
    # id alone, the statement reads the user from the session.
    name = "append_messages" if user_id is not None else "append_messages_by_session"
    missing = f"session {session_id} does not exist"

    def decode(rows: Rows) -> models.Appended:
        row = _first(rows, missing if user_id is None else f"{missing} for user {user_id}")
        return models.Appended(
            row["session_id"], row["user_id"], row["appended"], row["trimmed"], row["next_seq"]
        )

    if not retryable:
        return (yield from _single(name, params, decode))
    step = Step(name, params, if_in_doubt=FINISH_TURN_IN_DOUBT)
    try:
        rows = yield step
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name != "pk_turn_receipts":
            raise
        # An earlier attempt with this key (one whose answer was lost) committed while this
        # one ran; this one was rolled back whole. Running it again returns that receipt.
        rows = yield step
    return decode(rows)


def _request_key(turn_id: UUID, params: Mapping[str, object]) -> UUID:
    """The request's idempotency key: the turn's key and everything the call asked for, so the
    same call again (a retry) is stored once, while a Turn reused for other messages (as 0.1.0
    allowed) stores each of them. The session is not hashed (receipts are keyed by session and
    key), and each content goes in as itself behind its length, not through repr: the uuid5
    of repr(sorted(params)) this replaced cost several times as much (bench/RESULTS.md)."""
    material = repr([value for name, value in params.items() if name not in _UNKEYED])
    material += "".join(f"\x00{len(content)}:{content}" for content in _texts(params["contents"]))
    return UUID(
        bytes=hashlib.blake2b(material.encode(), key=turn_id.bytes, digest_size=16).digest()
    )


_UNKEYED = frozenset({"session_id", "user_id", "contents"})


def _texts(value: object) -> list[str]:
    return cast(list[str], value)


def trim_session_history(
    config: StoreConfig, session_id: UUID | str, max_pairs: int | None = None
) -> Plan[int]:
    """Keep the newest ``max_pairs`` pairs (2 x max_pairs messages); returns how many went."""
    checked = validate.uuid(session_id, "session_id")
    params = {
        "session_id": checked,
        "keep": 2 * validate.pairs(max_pairs, default=config.history_pairs),
    }
    return _single(
        "trim_session_history",
        params,
        lambda rows: int(_first(rows, f"session {checked} does not exist")["trimmed"]),
    )


def clear_session_history(config: StoreConfig, session_id: UUID | str) -> Plan[int]:
    """Delete every message of a session (the session stays); returns how many went."""
    checked = validate.uuid(session_id, "session_id")
    return _single(
        "trim_session_history",
        {"session_id": checked, "keep": 0},
        lambda rows: int(_first(rows, f"session {checked} does not exist")["trimmed"]),
    )


def get_history(
    config: StoreConfig, session_id: UUID | str, max_pairs: int | None = None
) -> Plan[list[models.Message]]:
    """The last ``max_pairs`` pairs of a session, oldest first (empty for an unknown session)."""
    params = {
        "session_id": validate.uuid(session_id, "session_id"),
        "history_pairs": validate.pairs(max_pairs, default=config.history_pairs),
    }
    return _single("get_history", params, lambda rows: _history(rows[0]))


def get_or_create_user(
    config: StoreConfig,
    channel: str,
    channel_user_id: str | int,
    *,
    display_name: str | None = None,
    now: datetime | None = None,
) -> Plan[models.User]:
    params = {
        "channel": validate.channel(config, channel),
        "channel_user_id": validate.identifier(channel_user_id, "channel_user_id"),
        "display_name": validate.optional_name(display_name, "display_name"),
        "now": validate.moment(now, "now"),
    }
    return _single("get_or_create_user", params, lambda rows: _user(rows[0]))


def find_user(config: StoreConfig, channel: str, channel_user_id: str | int) -> Plan[models.User]:
    """The user of a channel identity; ``NotFound`` when there is none (nothing is created)."""
    params = {
        "channel": validate.channel(config, channel),
        "channel_user_id": validate.identifier(channel_user_id, "channel_user_id"),
    }
    missing = f"no user {params['channel_user_id']!r} on channel {params['channel']!r}"
    return _single("find_user", params, lambda rows: _user(_first(rows, missing)))


def get_or_create_session(
    config: StoreConfig,
    user_id: UUID | str,
    *,
    chat: str | int | None = None,
    now: datetime | None = None,
) -> Plan[models.Session]:
    """The user's current session in ``chat`` (None: the private chat), or a new one when it has
    none or the latest is idle longer than ``idle_timeout`` (the new one then carries the last
    ``carry_over_pairs`` pairs). A chat is given by its id here, as ``begin_turn`` stores it
    (``Turn.chat_id``)."""
    checked = validate.uuid(user_id, "user_id")
    params = {
        "user_id": checked,
        "chat_id": None if chat is None else validate.identifier(chat, "chat"),
        "now": validate.moment(now, "now"),
        "idle": config.idle_timeout,
        "carry_pairs": config.carry_over_pairs,
    }
    return _single(
        "get_or_create_session",
        params,
        lambda rows: models.Session(rows[0]["session_id"], checked, rows[0]["session_created"]),
    )


def check_rate_limit(
    config: StoreConfig, user_id: UUID | str, *, now: datetime | None = None
) -> Plan[models.RateDecision]:
    """Count one request against every configured cap, or against none if any cap is reached.
    The decision is true when admitted; ``raise_if_refused()`` turns a refusal into
    ``RateLimited``."""
    params = {
        "user_id": validate.uuid(user_id, "user_id"),
        "now": validate.moment(now, "now"),
        **_rate_params(config),
    }
    return _single("check_rate_limit", params, lambda rows: _rate(rows[0]))


def track_usage(
    config: StoreConfig,
    user_id: UUID | str,
    channel: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_tokens: int = 0,
    *,
    now: datetime | None = None,
) -> Plan[UUID]:
    """Record one request's token usage; returns the row's id."""
    params = {
        "user_id": validate.uuid(user_id, "user_id"),
        "channel": validate.channel(config, channel),
        "input_tokens": validate.tokens(input_tokens, "input_tokens"),
        "output_tokens": validate.tokens(output_tokens, "output_tokens"),
        "cached_tokens": validate.tokens(cached_tokens, "cached_tokens"),
        "now": validate.moment(now, "now"),
    }
    return _single("track_usage", params, lambda rows: UUID(str(rows[0]["stat_id"])))


def register_proactive_user(
    config: StoreConfig, chat_id: str | int, user_id: UUID | str, *, now: datetime | None = None
) -> Plan[models.ProactiveUser]:
    """Register (or move) the chat a user receives proactive messages in."""
    params = {
        "chat_id": validate.identifier(chat_id, "chat_id"),
        "user_id": validate.uuid(user_id, "user_id"),
        "now": validate.moment(now, "now"),
    }
    return _single(
        "register_proactive_user",
        params,
        lambda rows: models.ProactiveUser(rows[0]["user_id"], rows[0]["chat_id"]),
    )


def load_users_from_db(config: StoreConfig) -> Plan[list[models.ProactiveUser]]:
    """Everyone proactive messages may go to: registered users and authenticated users of the
    ``proactive_channel`` (Telegram by default)."""
    return _single(
        "load_users_from_db",
        {"channel": config.proactive_channel},
        lambda rows: [models.ProactiveUser(row["user_id"], row["chat_id"]) for row in rows],
    )


def proactive_snapshot(config: StoreConfig) -> Plan[models.ProactiveList]:
    """The published proactive list and its version (``store.ProactiveUsers`` keeps it)."""

    def decode(rows: Rows) -> models.ProactiveList:
        row = rows[0]
        users = map(models.ProactiveUser, row["user_ids"], row["chat_ids"])
        return models.ProactiveList(int(row["version"]), tuple(users))

    return _single("proactive_snapshot", {"channel": config.proactive_channel}, decode)


# -- identity ----------------------------------------------------------------------------------


def create_link_code(
    config: StoreConfig, user_id: UUID | str, *, now: datetime | None = None
) -> Plan[models.LinkCode]:
    """A fresh 12-character code from the CSPRNG (``7KQ2-M9XD-4HTR``), valid for
    ``link_code_ttl``; it replaces the user's previous live code."""
    params = {
        "user_id": validate.uuid(user_id, "user_id"),
        "now": validate.moment(now, "now"),
        "ttl": config.link_code_ttl,
    }
    return _draw_link_code(params)


def _draw_link_code(params: Mapping[str, object]) -> Plan[models.LinkCode]:
    for _ in range(LINK_CODE_DRAWS):
        code = "".join(
            secrets.choice(validate.LINK_CODE_ALPHABET) for _ in range(validate.LINK_CODE_LENGTH)
        )
        key = validate.link_code_key(code)
        try:
            rows = yield Step("create_link_code", {**params, "code_key": key})
        except BaseException:
            # Failed, perhaps after the code was stored: the exception's traceback holds this
            # frame, and error trackers record frames' locals. The code must not be among them.
            del code
            raise
        if rows:  # the database keeps only the code's hash: this is its one appearance
            return models.LinkCode(validate.display_link_code(code), rows[0]["expires_at"])
    raise errors.StoreError(f"no free link code after {LINK_CODE_DRAWS} draws; expire old codes")


def redeem_link_code(
    config: StoreConfig, user_id: UUID | str, code: str, *, now: datetime | None = None
) -> Plan[models.Linked]:
    """Link ``user_id`` with the code's owner under one person (merging any persons they
    belong to). ``code`` as typed: case, spaces and hyphens do not matter. Raises
    ``LinkCodeInvalid`` (unknown, used or own code; ``LinkCodeOutdated`` for a six-digit code of
    the previous release), ``LinkCodeExpired`` or ``LinkCodeLocked`` (too many wrong codes
    lately; the right one is refused too)."""
    params = {
        "user_id": validate.uuid(user_id, "user_id"),
        "code_key": validate.link_code_key(validate.link_code(code)),
        "now": validate.moment(now, "now"),
        "max_failures": config.link_max_failures,
        "failure_window": config.link_failure_window,
        "lockout": config.link_lockout,
        "max_daily_failures": config.link_max_daily_failures,
    }
    return _single("redeem_link_code", params, lambda rows: _linked(rows[0]))


def _linked(row: Row) -> models.Linked:
    outcome = row["outcome"]
    if outcome == "linked":
        return models.Linked(row["person_id"], row["owner_id"])
    if outcome == "locked":
        until: datetime = row["locked_until"]
        raise errors.LinkCodeLocked(
            f"too many wrong link codes; try again after {until.isoformat()}", locked_until=until
        )
    if outcome == "expired":
        raise errors.LinkCodeExpired("this link code has expired; ask for a new one")
    if outcome == "own":
        raise errors.LinkCodeInvalid("this is your own link code; redeem it from the other account")
    raise errors.LinkCodeInvalid("no such link code, or it was already used")


def unlink(
    config: StoreConfig, user_id: UUID | str, *, now: datetime | None = None
) -> Plan[models.Unlinked]:
    """The user leaves its person (its other users stay linked to each other); the person goes
    when its last user leaves. A user linked to nobody is left as it is."""
    checked = validate.uuid(user_id, "user_id")
    params = {"user_id": checked, "now": validate.moment(now, "now")}
    return _single(
        "unlink",
        params,
        lambda rows: models.Unlinked(checked, rows[0]["person_id"], rows[0]["person_deleted"]),
    )


def get_linked_users(config: StoreConfig, user_id: UUID | str) -> Plan[list[models.User]]:
    """Every user of the person ``user_id`` belongs to, itself included."""
    checked = validate.uuid(user_id, "user_id")

    def decode(rows: Rows) -> list[models.User]:
        if not rows:
            raise errors.NotFound(f"user {checked} does not exist")
        return [_user(row) for row in rows]

    return _single("get_linked_users", {"user_id": checked}, decode)
