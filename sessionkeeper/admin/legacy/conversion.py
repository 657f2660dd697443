"""Step 3, conversion: the legacy histories are copied into ``session_messages`` in batches, one
transaction each. A batch copies the arrays of its sessions (seq 0, 1, ... in array order, with
role, content and the message's own timestamp), verifies the copy in SQL against the array, and
only then sets the session's ``messages`` to NULL and its ``next_seq``. NULL is the per-session
"converted" marker, so an interrupted run loses nothing, and a re-run goes on where it stopped
without duplicates. When no array is left the column is dropped.

Messages the store would refuse today (its own check, ``store.validate.message``) are moved
verbatim to ``legacy_quarantined_messages`` with a reason, never dropped; the history keeps the
others, renumbered without gaps.
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
from psycopg.types.json import Jsonb

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


def quarantine_reason(element: object, max_bytes: int) -> str | None:
    """Why the store would refuse this legacy message (``store.validate.message`` decides), in
    the quarantine's words; None if it would take it. The timestamp is not judged here: an
    unreadable one is replaced (``message_time``), not quarantined."""
    if isinstance(element, dict):
        element = {"role": element.get("role"), "content": element.get("content")}
    try:
        validate.message(_store_config(max_bytes), element, "message")
    except InvalidInput as refused:
        if refused.rule == "size":
            return f"over {max_bytes} bytes"
        return _REASONS.get(refused.rule or "", str(refused))
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
    batches: int = 0

    def add(self, other: ConversionTotals) -> None:
        self.sessions += other.sessions
        self.messages += other.messages
        self.quarantined.update(other.quarantined)
        self.unreadable_times += other.unreadable_times
        self.batches += other.batches

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.quarantined.items()))
        line = (
            f"{self.messages} messages of {self.sessions} sessions copied; "
            f"{self.quarantined.total()} quarantined in {QUARANTINE_TABLE}"
        )
        line += f" ({reasons})" if reasons else ""
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
class _Batch:
    rows: list[tuple[UUID, int, str, str, datetime]] = field(default_factory=list)
    quarantined: list[dict[str, object]] = field(default_factory=list)
    totals: ConversionTotals = field(default_factory=ConversionTotals)


def split_history(
    session_id: UUID,
    user_id: UUID,
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
            into.quarantined.append(
                {
                    "session_id": session_id,
                    "array_index": index,
                    "user_id": user_id,
                    "reason": reason,
                    "message": Jsonb(element),
                }
            )
            into.totals.quarantined[reason] += 1
            continue
        assert isinstance(element, dict)
        moment = message_time(element.get("timestamp"), zone)
        if moment is None:
            into.totals.unreadable_times += 1
            moment = previous
        into.rows.append((session_id, seq, element["role"], element["content"], moment))
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
        for session_id, user_id, started, history in sessions:
            split_history(session_id, user_id, started, history, options, zone, batch)
        try:
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY session_messages (session_id, seq, role, content, created_at) FROM STDIN"
                ) as copy,
            ):
                for row in batch.rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise LegacyDatabaseError(
                "a session still holding a legacy history already has new history rows"
                f" ({exc.diag.message_detail}); were bots running during the conversion?"
                " Nothing of this batch was written"
            ) from None
        if batch.quarantined:
            with conn.cursor() as cursor:
                cursor.executemany(QUERIES["insert_quarantined"], batch.quarantined)
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
    conn: psycopg.Connection[Any], options: ConversionOptions, report: Callable[[str], None]
) -> tuple[ConversionTotals, int]:
    """Convert batches until none is left (then drop the legacy column) or ``max_batches``
    were done. Returns the totals and the number of sessions still to convert."""
    zone = legacy_zone(options.time_zone)
    total = _sessions_to_convert(conn)
    report(f"converting the histories of {total} sessions in batches of {options.batch_size}")
    totals, started = ConversionTotals(), time.monotonic()
    while options.max_batches is None or totals.batches < options.max_batches:
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
            for session_id, user_id, started, history in chunk:
                split_history(session_id, user_id, started, history, options, zone, batch)
            totals.add(batch.totals)
    return totals
