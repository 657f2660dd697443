"""Input checks, run before anything reaches the database. Each returns the clean value or
raises ``InvalidInput`` naming the field."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from .config import StoreConfig
from .errors import InvalidInput, LinkCodeOutdated
from .models import ROLES

T = TypeVar("T")

MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_BATCH = 1000
MAX_EXTRA_DEPTH = 64  # a message's extra fields; Python's json recursion ends near 1000
# Per call. Daily totals add up many calls in bigint columns (the rollup saturates at the
# bigint maximum, which this keeps out of reach: 2**32 calls a day per user and channel).
MAX_TOKENS = 2**31 - 1
# Every time the store accepts (now=, message timestamps) lies in [EARLIEST, LATEST). Python
# reads no year outside 1-9999 back, and the store adds its intervals (link-code validity,
# lock-out, rate windows) to the time it was given: the margin below year 10000 covers them.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_CHANNEL = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Link codes: 12 symbols of Crockford's base32 (digits and capitals without I, L, O, U), 60
# bits from the CSPRNG; see "Identity" in docs/store.md for the bound this size gives.
LINK_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LINK_CODE_LENGTH = 12
_CODE = re.compile(f"[{LINK_CODE_ALPHABET}]{{{LINK_CODE_LENGTH}}}")
_OLD_CODE = re.compile(r"[0-9]{6}")
# What a person may type: any case, spaces or dashes between groups, O for 0, I and L for 1.
_CODE_TYPING = str.maketrans("OIL", "011", "-\u2010\u2011\u2012\u2013\u2014")


def text(value: object, field: str, *, max_chars: int | None = None) -> str:
    """A non-empty string PostgreSQL can store: no NUL byte, no lone surrogate."""
    if not isinstance(value, str):
        raise InvalidInput(
            f"{field} must be a string, not {type(value).__name__}", field=field, rule="type"
        )
    if not value:
        raise InvalidInput(f"{field} must not be empty", field=field, rule="empty")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidInput(
            f"{field} is longer than {max_chars} characters", field=field, rule="length"
        )
    if "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character", field=field, rule="nul")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{field} is not valid Unicode (lone surrogate)", field=field, rule="unicode"
        ) from None
    return value


def identifier(value: object, field: str) -> str:
    """An id a channel gives (chat or user id): a string, or an integer as Telegram sends."""
    if isinstance(value, int) and not isinstance(value, bool):
        # Checked before str(): Python refuses to print integers of over 4300 digits.
        if abs(value) >= 10**MAX_ID_LENGTH:
            raise InvalidInput(f"{field} is longer than {MAX_ID_LENGTH} digits", field=field)
        value = str(value)
    return text(value, field, max_chars=MAX_ID_LENGTH)


def chat(value: object, channel_user_id: str) -> str | None:
    """The chat of a conversation as stored: None for the user's private chat (no chat given,
    the user's own id, or a chat object of type ``private``), else the chat's id. Takes an id
    (str or int, as ``identifier``), or a chat object or mapping with ``id`` and ``type``
    (aiogram's and python-telegram-bot's ``Chat``)."""
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        chat_id = identifier(value, "chat")
        return None if chat_id == channel_user_id else chat_id
    kind: object
    if isinstance(value, Mapping):
        chat_id_value, kind = value.get("id"), value.get("type")
    else:
        chat_id_value, kind = getattr(value, "id", None), getattr(value, "type", None)
    if chat_id_value is None or not isinstance(kind, str):
        raise InvalidInput(
            f"chat must be an id (str or int) or a chat with id and type, not {_shown(value)}",
            field="chat",
            rule="shape",
        )
    chat_id = identifier(chat_id_value, "chat.id")
    return None if kind == "private" or chat_id == channel_user_id else chat_id


def optional_name(value: object, field: str) -> str | None:
    return None if value is None else text(value, field, max_chars=MAX_NAME_LENGTH)


def channel(config: StoreConfig, value: object) -> str:
    name = text(value, "channel", max_chars=32)
    if not _CHANNEL.fullmatch(name):
        raise InvalidInput(
            f"channel {name!r} is not a lower-case name (a-z, 0-9, _ and -)", field="channel"
        )
    if config.channels is not None and name not in config.channels:
        raise InvalidInput(f"channel {name!r} is not in the configured channels", field="channel")
    return name


def uuid(value: object, field: str) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidInput(f"{field} must be a UUID, not {_shown(value)}", field=field)


def _shown(value: object) -> str:
    """A short repr for an error message; repr() itself may fail (an int of over 4300
    digits) or be huge."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        return f"{value!r:.60}"
    except Exception:
        return type(value).__name__


def count(value: object, field: str, *, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{field} must be an integer, not {type(value).__name__}", field=field)
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{field} must be between {minimum} and {maximum}", field=field)
    return value


def flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(
            f"{field} must be True or False, not {type(value).__name__}", field=field
        )
    return value


def tokens(value: object, field: str) -> int:
    return count(value, field, minimum=0, maximum=MAX_TOKENS)


def pairs(value: object, field: str = "max_pairs", *, default: int) -> int:
    """A number of message pairs; None means ``default``."""
    return default if value is None else count(value, field, minimum=1, maximum=100_000)


def moment(value: object, field: str, *, rule: str | None = None) -> datetime | None:
    """An aware datetime between ``EARLIEST`` and ``LATEST``, in UTC; or None (the database
    clock decides)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(
            f"{field} must be a datetime, not {type(value).__name__}", field=field, rule=rule
        )
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as exc:  # a tzinfo that breaks its contract
        raise InvalidInput(
            f"{field} has an unusable time zone: {exc}", field=field, rule=rule
        ) from None
    if offset is None:
        raise InvalidInput(f"{field} must carry a time zone", field=field, rule=rule)
    # Aware comparison never overflows; converting a datetime near year 1 or 9999 to UTC can.
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(
            f"{field} must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC),"
            f" not {value.isoformat()}",
            field=field,
            rule=rule,
        )
    return value.astimezone(UTC)


def link_code(value: object) -> str:
    """The canonical form of a typed link code (``7kq2-m9xd-4htr`` -> ``7KQ2M9XD4HTR``).

    A six-digit code of the previous release raises ``LinkCodeOutdated``: such codes are too
    easy to guess and are no longer redeemed (nothing reaches the database, nothing is counted).
    """
    typed = text(value, "code", max_chars=64)
    code = "".join(typed.split()).upper().translate(_CODE_TYPING)
    if _OLD_CODE.fullmatch(code):
        raise LinkCodeOutdated(
            "six-digit link codes are no longer accepted; ask for a new code (12 characters)"
        )
    if not _CODE.fullmatch(code):
        raise InvalidInput(
            "a link code is 12 letters and digits, such as 7KQ2-M9XD-4HTR", field="code"
        )
    return code


def link_code_key(code: str) -> str:
    """What the database stores and looks up for a canonical code (``sk_link_code_key`` in
    store/sql/functions.sql computes the same): the store sends only this, so the code itself
    never reaches the server's logs."""
    return "h:" + hashlib.sha256(code.encode("utf-8")).hexdigest()


def display_link_code(code: str) -> str:
    """A canonical code in groups of four, as people read and type it."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def content(config: StoreConfig, value: object, field: str) -> str:
    checked = text(value, field)
    size = len(checked.encode("utf-8"))
    if size > config.max_message_bytes:
        raise InvalidInput(
            f"{field} is {size} bytes; the limit is {config.max_message_bytes} (max_message_bytes)",
            field=field,
            rule="size",
        )
    return checked


def extra(config: StoreConfig, value: object, field: str) -> str | None:
    """A message's extra fields (a JSON object) as compact JSON text; None for none or ``{}``.
    Every value must be JSON (finite numbers), no string or key may hold NUL or a lone
    surrogate, and the text may not exceed ``max_message_bytes`` UTF-8 bytes."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be a mapping (a JSON object)", field=field, rule="type")
    if not value:
        return None
    if _too_deep(value, MAX_EXTRA_DEPTH):  # json.dumps would raise RecursionError
        raise InvalidInput(
            f"{field} is nested deeper than {MAX_EXTRA_DEPTH} levels", field=field, rule="json"
        )
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not JSON: {exc}", field=field, rule="json") from None
    if any("\x00" in piece for piece in _strings(value)):
        raise InvalidInput(f"{field} contains a NUL character", field=field, rule="nul")
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{field} is not valid Unicode (lone surrogate)", field=field, rule="unicode"
        ) from None
    if size > config.max_message_bytes:
        raise InvalidInput(
            f"{field} is {size} bytes; the limit is {config.max_message_bytes} (max_message_bytes)",
            field=field,
            rule="size",
        )
    return encoded


def _too_deep(value: object, limit: int) -> bool:
    """Whether objects and arrays nest deeper than ``limit`` (checked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, Mapping) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _strings(value: object) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def message(
    config: StoreConfig, value: object, field: str
) -> tuple[str, str, datetime | None, str | None]:
    """``(role, content, timestamp, extra)`` from a ``{role, content, timestamp?, extra?}``
    mapping or a ``Message``; the timestamp may be a datetime or an ISO 8601 string, ``extra``
    comes back as JSON text. Top-level ``tool_calls`` and ``tool_call_id`` (OpenAI's shape) go
    into ``extra``. Content may be empty (or None) only when ``extra`` carries the message (an
    AI message that only calls tools)."""
    if isinstance(value, Mapping):
        entry: Mapping[str, Any] = value
    elif hasattr(value, "role") and hasattr(value, "content"):
        entry = {"role": value.role, "content": value.content}
        entry["timestamp"] = getattr(value, "timestamp", None)
        entry["extra"] = getattr(value, "extra", None)
    else:
        raise InvalidInput(
            f"{field} must be a {{role, content}} mapping", field=field, rule="shape"
        )
    role = entry.get("role")
    if role not in ROLES:
        raise InvalidInput(
            f"{field}.role must be one of {', '.join(ROLES)}", field=field, rule="role"
        )
    stamp = entry.get("timestamp")
    if isinstance(stamp, str):
        try:
            stamp = datetime.fromisoformat(stamp)
        except ValueError:
            raise InvalidInput(
                f"{field}.timestamp is not ISO 8601", field=field, rule="timestamp"
            ) from None
    fields = entry.get("extra")
    if "tool_calls" in entry or "tool_call_id" in entry:
        # An OpenAI-shaped message (a chat completion's, as the bot got it): its tool fields
        # are kept in extra, where as_prompt() finds them.
        if fields is not None and not isinstance(fields, Mapping):
            raise InvalidInput(
                f"{field}.extra must be a mapping (a JSON object)", field=field, rule="type"
            )
        fields = {**(fields or {})}
        fields.update((key, entry[key]) for key in _TOOL_FIELDS if entry.get(key) is not None)
    if fields is not None and isinstance(fields, Mapping):
        _tool_fields(fields, field)
    extras = extra(config, fields, f"{field}.extra")
    body = entry.get("content")
    return (
        str(role),
        # None: an OpenAI-shaped assistant message that only calls tools.
        ""
        if body in ("", None) and extras is not None
        else content(config, body, f"{field}.content"),
        moment(stamp, f"{field}.timestamp", rule="timestamp"),
        extras,
    )


_TOOL_FIELDS = ("tool_calls", "tool_call_id")


def _tool_fields(fields: Mapping[str, Any], field: str) -> None:
    """A message's tool calls are a list of objects, each with an ``id``; a tool result's call
    id is a non-empty string."""
    calls = fields.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list | tuple)
        and all(isinstance(call, Mapping) and isinstance(call.get("id"), str) for call in calls)
    ):
        raise InvalidInput(
            f"{field}.tool_calls must be a list of objects, each with an id",
            field=field,
            rule="tool_calls",
        )
    call_id = fields.get("tool_call_id")
    if call_id is not None and not (isinstance(call_id, str) and call_id):
        raise InvalidInput(
            f"{field}.tool_call_id must be a non-empty string", field=field, rule="tool_calls"
        )


def tool_exchange(entries: Iterable[object]) -> None:
    """A turn's messages as ``finish_turn`` stores them: every tool result answers a call made
    earlier in the same turn (providers refuse a result without its call)."""
    calls: set[str] = set()
    for i, entry in enumerate(entries):
        fields = _fields(entry)
        calls.update(str(call.get("id")) for call in fields.get("tool_calls") or ())
        role = entry.get("role") if isinstance(entry, Mapping) else getattr(entry, "role", None)
        if role == "tool" and fields.get("tool_call_id") not in calls:
            raise InvalidInput(
                f"messages[{i}] is a tool result without a matching tool call in this turn",
                field=f"messages[{i}]",
                rule="tool_calls",
            )


def _fields(entry: object) -> Mapping[str, Any]:
    """A message's tool fields, wherever it carries them (top level, or in extra)."""
    if isinstance(entry, Mapping):
        fields = entry.get("extra")
        fields = dict(fields) if isinstance(fields, Mapping) else {}
        fields.update((key, entry[key]) for key in _TOOL_FIELDS if key in entry)
        return fields
    extra_fields = getattr(entry, "extra", None)
    return extra_fields if isinstance(extra_fields, Mapping) else {}


class Batch(NamedTuple):
    """A validated batch of messages as parallel lists, the shape the append statement takes."""

    roles: list[str]
    contents: list[str]
    created: list[datetime | None]
    extras: list[str | None]


def messages(config: StoreConfig, values: object) -> Batch:
    """A batch of 1 to ``MAX_BATCH`` messages; any bad message fails the whole batch."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidInput("messages must be a list of {role, content} mappings", field="messages")
    # One more than the limit is enough to refuse: an endless iterable is not read to its end.
    entries = islice(values, MAX_BATCH + 1)
    batch = [message(config, value, f"messages[{i}]") for i, value in enumerate(entries)]
    if not 1 <= len(batch) <= MAX_BATCH:
        raise InvalidInput(f"messages must hold 1 to {MAX_BATCH} entries", field="messages")
    return Batch(
        [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch], [b[3] for b in batch]
    )


def writer(value: T, field: str) -> T:
    """Something to write text to: an object with a ``write(str)`` method (a file, stdout)."""
    if not callable(getattr(value, "write", None)):
        raise InvalidInput(f"{field} must have a write(str) method", field=field)
    return value
