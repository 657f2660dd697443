"""Step 3, conversion: the legacy histories are copied into ``session_messages`` in batches, one
transaction each. A batch copies the arrays of its sessions (seq 0, 1, ... in array order, with
role, content, the message's own timestamp and its other keys as ``extra``), verifies the copy in
SQL against the array, and only then sets the session's ``messages`` to NULL and its
``next_seq``. NULL is the per-session "converted" marker, so an interrupted run loses nothing,
and a re-run goes on where it stopped without duplicates. When no array is left the column is
dropped.

Messages the store would refuse today (its own check, ``store.validate.message``) are moved
verbatim to ``legacy_quarantined_messages`` with a reason, never dropped; the history keeps the
others, renumbered without gaps. Whatever JSON is copied as it was (a quarantined message, a
message's extra fields) goes from the array to its new place in SQL, jsonb to jsonb: a number
with more digits than a Python float holds arrives exactly as it was written.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from types import MappingProxyType
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from store import validate
from store.config import StoreConfig
from store.errors import ConfigurationError, InvalidInput
from store.queries import parse

from .inspection import QUARANTINE_TABLE, LegacyDatabaseError, first_line

QUERIES = MappingProxyType(
    parse(resources.files(__package__).joinpath("conversion.sql").read_text())
)

DEFAULT_BATCH_SIZE = 1000  # sessions per batch: up to 40,000 messages with the seed's trim


def legacy_zone(name: str) -> ZoneInfo:
    """The zone the seed's TIMESTAMP columns were written in (its server's TimeZone)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r} (legacy time zone)") from None


# A legacy message's keys that have columns of their own; any other key is kept in ``extra``.
OWN_KEYS = frozenset({"role", "content", "timestamp"})

# The quarantine's wording for each rule of the store's message check; the reasons stored in
# legacy_quarantined_messages have always read like this.
_REASONS = {
    "shape": "not a {role, content} object",
    "role": "unknown role",
    "type": "content is not text",
    "empty": "empty content",
    "nul": "NUL in content",
    "unicode": "invalid Unicode",
}
# The same for the rules of the extra fields' check (``store.validate.extra``). A JSON value
# Python cannot write back is a number beyond a float's range (1e400 reads as infinity).
_EXTRA_REASONS = {
    "nul": "NUL in extra fields",
    "unicode": "invalid Unicode in extra fields",
    "json": "number out of range in extra fields",
}


def extra_fields(element: dict[str, object]) -> dict[str, object]:
    """A legacy message's keys besides role, content and timestamp: its ``extra``."""
    return {key: value for key, value in element.items() if key not in OWN_KEYS}


def quarantine_reason(element: object, max_bytes: int) -> str | None:
    """Why the store would refuse this legacy message (``store.validate.message`` decides, its
    other keys checked as the message's ``extra``), in the quarantine's words; None if it would
    take it. The timestamp is not judged here: an unreadable one is replaced (``message_time``),
    not quarantined."""
    if isinstance(element, dict):
        element = {
            "role": element.get("role"),
            "content": element.get("content"),
            "extra": extra_fields(element),
        }
    try:
        validate.message(_store_config(max_bytes), element, "message")
    except InvalidInput as refused:
        in_extra = (refused.field or "").endswith(".extra")
        if refused.rule == "size":
            return f"extra fields over {max_bytes} bytes" if in_extra else f"over {max_bytes} bytes"
        reasons = _EXTRA_REASONS if in_extra else _REASONS
        return reasons.get(refused.rule or "", str(refused))
    return None


@functools.cache
def _store_config(max_bytes: int) -> StoreConfig:
    return StoreConfig(max_message_bytes=max_bytes)


def message_time(value: object, zone: ZoneInfo) -> datetime | None:
    """The legacy timestamp: an ISO 8601 string (``toISOString()``; without an offset it is
    read in the legacy zone) or epoch milliseconds (``Date.now()``); None if unreadable."""
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.strip())
            return moment if moment.tzinfo else moment.replace(tzinfo=zone)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def history_elements(history: object) -> list[object]:
    """The legacy array as the SQL verification reads it: JSON null is an empty history, any
    other non-array value a one-element one."""
    if history is None:
        return []
    return history if isinstance(history, list) else [history]


@dataclass
class ConversionTotals:
    sessions: int = 0
    messages: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    unreadable_times: int = 0
    with_extra: int = 0  # copied messages that carry extra fields
    batches: int = 0

    def add(self, other: ConversionTotals) -> None:
        self.sessions += other.sessions
        self.messages += other.messages
        self.quarantined.update(other.quarantined)
        self.unreadable_times += other.unreadable_times
        self.with_extra += other.with_extra
        self.batches += other.batches

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.quarantined.items()))
        line = (
            f"{self.messages} messages of {self.sessions} sessions copied; "
            f"{self.quarantined.total()} quarantined in {QUARANTINE_TABLE}"
        )
        line += f" ({reasons})" if reasons else ""
        if self.with_extra:
            line += f"; {self.with_extra} carry extra fields (kept in session_messages.extra)"
        if self.unreadable_times:
            line += (
                f"; {self.unreadable_times} without a readable timestamp took the previous"
                " message's time (or the session's start)"
            )
        return line


@dataclass(frozen=True)
class ConversionOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batches: int | None = None  # stop after this many batches (a re-run continues)
    time_zone: str = "UTC"
    # The store's limit (SESSIONKEEPER_MAX_MESSAGE_BYTES, default 64 KiB): what it would refuse.
    max_message_bytes: int = field(default_factory=lambda: StoreConfig.from_env().max_message_bytes)

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.max_message_bytes <= 0:
            raise ConfigurationError("batch size and max message bytes must be positive")
        if self.max_batches is not None and self.max_batches < 0:
            raise ConfigurationError("max batches must not be negative")


@dataclass
class _Elements:
    """Array elements named by (session, array index) as parallel lists, the shape the
    statements that copy JSON in SQL take."""

    session_ids: list[UUID] = field(default_factory=list)
    array_indexes: list[int] = field(default_factory=list)

    def add(self, session_id: UUID, array_index: int) -> None:
        self.session_ids.append(session_id)
        self.array_indexes.append(array_index)

    def params(self) -> dict[str, list[Any]]:
        return {"session_ids": self.session_ids, "array_indexes": self.array_indexes}


@dataclass
class _Batch:
    rows: list[tuple[UUID, int, str, str, datetime]] = field(default_factory=list)
    # Rows whose element has extra fields, with their seq; copied in SQL after the rows.
    with_extra: _Elements = field(default_factory=_Elements)
    seqs_with_extra: list[int] = field(default_factory=list)
    quarantined: _Elements = field(default_factory=_Elements)
    reasons: list[str] = field(default_factory=list)
    totals: ConversionTotals = field(default_factory=ConversionTotals)


def split_history(
    session_id: UUID,
    started: datetime,
    history: object,
    options: ConversionOptions,
    zone: ZoneInfo,
    into: _Batch,
) -> None:
    """Sort one legacy history into history rows and quarantined messages."""
    seq, previous = 0, started
    for index, element in enumerate(history_elements(history)):
        reason = quarantine_reason(element, options.max_message_bytes)
        if reason is not None:
            into.quarantined.add(session_id, index)
            into.reasons.append(reason)
            into.totals.quarantined[reason] += 1
            continue
        assert isinstance(element, dict)
        moment = message_time(element.get("timestamp"), zone)
        if moment is None:
            into.totals.unreadable_times += 1
            moment = previous
        into.rows.append((session_id, seq, element["role"], element["content"], moment))
        if extra_fields(element):
            into.with_extra.add(session_id, index)
            into.seqs_with_extra.append(seq)
            into.totals.with_extra += 1
        seq, previous = seq + 1, moment
    into.totals.messages += seq
    into.totals.sessions += 1


def convert_batch(
    conn: psycopg.Connection[Any], options: ConversionOptions, zone: ZoneInfo
) -> ConversionTotals | None:
    """Convert the next batch of sessions in one transaction; None when none is left."""
    with conn.transaction():
        claimed = conn.execute(QUERIES["claim_batch"], {"batch_size": options.batch_size})
        sessions = claimed.fetchall()
        if not sessions:
            return None
        batch = _Batch()
        owners: dict[UUID, UUID] = {}
        for session_id, started, history, user_id in sessions:
            owners[session_id] = user_id
            split_history(session_id, started, history, options, zone, batch)
        try:
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY session_messages (user_id, session_id, seq, role, content, created_at)"
                    " FROM STDIN"
                ) as copy,
            ):
                # Each row names its session's user (revision 0014; the fill trigger is for
                # release 0.1.0's bots and goes in the next release).
                for row in batch.rows:
                    copy.write_row((owners[row[0]], *row))
        except psycopg.errors.UniqueViolation as exc:
            raise LegacyDatabaseError(
                "a session still holding a legacy history already has new history rows"
                f" ({exc.diag.message_detail}); were bots running during the conversion?"
                " Nothing of this batch was written"
            ) from None
        if batch.seqs_with_extra:
            conn.execute(
                QUERIES["copy_extras"],
                {**batch.with_extra.params(), "seqs": batch.seqs_with_extra},
            )
        if batch.reasons:
            conn.execute(
                QUERIES["insert_quarantined"],
                {**batch.quarantined.params(), "reasons": batch.reasons},
            )
        ids = [s[0] for s in sessions]
        mismatched = conn.execute(QUERIES["verify_batch"], {"ids": ids}).fetchall()
        if mismatched:
            raise LegacyDatabaseError(
                f"verification failed for {len(mismatched)} sessions (first {mismatched[0][0]}):"
                " their new history rows differ from the legacy array; the batch was rolled"
                " back. Were bots writing during the conversion?"
            )
        conn.execute(QUERIES["finish_batch"], {"ids": ids})
    batch.totals.batches = 1
    return batch.totals


def convert(
    conn: psycopg.Connection[Any],
    options: ConversionOptions,
    report: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[ConversionTotals, int]:
    """Convert batches until none is left (then drop the legacy column), ``max_batches`` were
    done, or ``stop()`` says so between two batches. Returns the totals and the number of
    sessions still to convert. ``progress(sessions done, total)`` is called after each batch."""
    zone = legacy_zone(options.time_zone)
    total = _sessions_to_convert(conn)
    report(f"converting the histories of {total} sessions in batches of {options.batch_size}")
    totals, started = ConversionTotals(), time.monotonic()
    while options.max_batches is None or totals.batches < options.max_batches:
        if stop():
            break
        try:
            done = convert_batch(conn, options, zone)
        except psycopg.OperationalError:
            raise
        except psycopg.DatabaseError as exc:
            raise LegacyDatabaseError(
                f"legacy conversion stopped: {first_line(exc)}; that batch was rolled back,"
                " the sessions converted before it stay converted"
            ) from exc
        if done is None:
            break
        totals.add(done)
        report(
            f"batch {totals.batches}: {totals.sessions}/{total} sessions,"
            f" {totals.messages} messages copied, {totals.quarantined.total()} quarantined"
            f" ({time.monotonic() - started:.1f} s)"
        )
        if progress is not None:
            progress(totals.sessions, total)
    left = _sessions_to_convert(conn)
    if left == 0:
        # Every array was copied and verified, batch by batch: the column has served.
        conn.execute(QUERIES["drop_legacy_column"])
    return totals, left


def _sessions_to_convert(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(QUERIES["sessions_to_convert"]).fetchone()
    return int(row[0]) if row else 0


def survey(
    conn: psycopg.Connection[Any], options: ConversionOptions, zone: ZoneInfo
) -> ConversionTotals:
    """Classify every legacy history without writing anything."""
    totals = ConversionTotals()
    with conn.transaction(), conn.cursor(name="sk_legacy_survey") as cursor:
        cursor.execute(QUERIES["survey"])
        while chunk := cursor.fetchmany(options.batch_size):
            batch = _Batch()
            for session_id, started, history in chunk:
                split_history(session_id, started, history, options, zone, batch)
            totals.add(batch.totals)
    return totals
