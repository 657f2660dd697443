"""Adopting a database made by the original TypeScript system, in place (``sessionkeeper migrate``).

The seed created its tables itself, with no migration history: ``users``, ``sessions`` holding the
whole history in a JSONB array ``sessions.messages``, ``rate_limits``, ``usage_stats``,
``persons``, ``link_codes``, with ``TIMESTAMP`` (no time zone) columns and ``INT`` counters, next
to many tables of other subsystems that are none of our business. Such a database is recognised
by having ``sessions.messages`` and no Alembic version table, and upgraded in three steps:

1. **Adopt** (one transaction): the six seed tables are altered into revision 0001's exact shape
   (types, defaults, NOT NULL, constraint and index names), 0001's other tables are created and
   the database is stamped at 0001. ``TIMESTAMP`` values are read as wall-clock times of the
   legacy zone (UTC unless told otherwise). Other tables, and their foreign keys to ours, stay.
2. **Upgrade**: Alembic takes it from 0001 to head like any other database.
3. **Convert** the histories in batches, one transaction each: a batch copies the arrays of its
   sessions into ``session_messages`` (seq 0, 1, ... in array order, with role, content and the
   message's own timestamp), verifies the copy in SQL against the array, and only then sets the
   session's ``messages`` to NULL and its ``next_seq``. NULL is the per-session "converted"
   marker, so an interrupted run loses nothing, and a re-run goes on where it stopped without
   duplicates. When no array is left the column is dropped and the schema equals a fresh one.

Messages that break today's rules are moved verbatim to ``legacy_quarantined_messages`` with a
reason, never dropped; the history keeps the others, renumbered without gaps.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from types import MappingProxyType
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from store.config import StoreConfig
from store.errors import ConfigurationError, StoreError
from store.models import ROLES
from store.queries import parse
from store.schema import metadata

from .. import migrate

QUERIES = MappingProxyType(parse(resources.files(__package__).joinpath("legacy.sql").read_text()))

# Session-level advisory lock held for a whole adoption and conversion ("sk-legc").
LEGACY_LOCK_KEY = 0x736B2D6C656763
DEFAULT_BATCH_SIZE = 1000  # sessions per batch: up to 40,000 messages with the seed's trim


class LegacyDatabaseError(StoreError):
    """The database cannot be adopted or converted as it is; nothing was changed by the step."""


@dataclass(frozen=True)
class ColumnShape:
    name: str
    type: str  # as format_type() spells it
    nullable: bool = False
    default: str | None = None


def _cols(*columns: tuple[Any, ...]) -> tuple[ColumnShape, ...]:
    return tuple(ColumnShape(*c) for c in columns)


_UUID, _TEXT, _TSTZ = "uuid", "text", "timestamp with time zone"
_NEW_UUID, _NOW = "gen_random_uuid()", "now()"

# Revision 0001's columns of the seed tables: the shape adoption produces before the stamp.
# Frozen like a revision; later revisions change these tables through Alembic as usual.
CORE_TABLES: Mapping[str, tuple[ColumnShape, ...]] = MappingProxyType(
    {
        "persons": _cols(
            ("person_id", _UUID, False, _NEW_UUID), ("created_at", _TSTZ, False, _NOW)
        ),
        "users": _cols(
            ("user_id", _UUID, False, _NEW_UUID),
            ("channel", _TEXT),
            ("channel_user_id", _TEXT),
            ("display_name", _TEXT, True),
            ("home_location", _TEXT, True),
            ("person_id", _UUID, True),
            ("authenticated", "boolean", False, "false"),
            ("created_at", _TSTZ, False, _NOW),
            ("updated_at", _TSTZ, False, _NOW),
        ),
        "sessions": _cols(
            ("session_id", _UUID, False, _NEW_UUID),
            ("user_id", _UUID),
            ("created_at", _TSTZ, False, _NOW),
            ("last_active", _TSTZ, False, _NOW),
            ("next_seq", "bigint", False, "0"),
        ),
        "rate_limits": _cols(
            ("user_id", _UUID),
            ("window_seconds", "integer"),
            ("window_start", _TSTZ),
            ("request_count", "integer", False, "0"),
        ),
        "usage_stats": _cols(
            ("stat_id", _UUID, False, _NEW_UUID),
            ("user_id", _UUID),
            ("channel", _TEXT),
            ("input_tokens", "bigint", False, "0"),
            ("output_tokens", "bigint", False, "0"),
            ("cached_tokens", "bigint", False, "0"),
            ("created_at", _TSTZ, False, _NOW),
            ("rolled_up", "boolean", False, "false"),
        ),
        "link_codes": _cols(
            ("code", _TEXT),
            ("user_id", _UUID),
            ("created_at", _TSTZ, False, _NOW),
            ("expires_at", _TSTZ),
            ("used_at", _TSTZ, True),
            ("used_by", _UUID, True),
        ),
    }
)
# Primary keys adoption keeps (renamed to 0001's names); rate_limits gets a new, wider one.
_PRIMARY_KEYS = {t: [CORE_TABLES[t][0].name] for t in CORE_TABLES if t != "rate_limits"}
LEGACY_COLUMN = "messages"  # sessions.messages, the seed's JSONB history
QUARANTINE_TABLE = "legacy_quarantined_messages"


@dataclass(frozen=True)
class Inspection:
    """What a database holds: tables with their columns (name -> (type, nullable))."""

    tables: Mapping[str, Mapping[str, tuple[str, bool]]]
    revision: str | None

    @property
    def has_legacy_history(self) -> bool:
        return LEGACY_COLUMN in self.tables.get("sessions", {})

    @property
    def needs_adoption(self) -> bool:
        return self.revision is None and self.has_legacy_history

    def adoption_problems(self) -> list[str]:
        """Why adoption would fail or lose something; empty when it can go ahead."""
        problems = [f"table {t} is missing" for t in ("users", "sessions") if t not in self.tables]
        for table, shape in CORE_TABLES.items():
            known = {c.name for c in shape} | ({LEGACY_COLUMN} if table == "sessions" else set())
            unknown = sorted(set(self.tables.get(table, {})) - known)
            problems += [f"column {table}.{c} is unknown to sessionkeeper" for c in unknown]
        ours = (set(metadata.tables) | {"alembic_version"}) - set(CORE_TABLES)
        problems += [f"table {t} already exists" for t in sorted(ours & set(self.tables))]
        history = self.tables.get("sessions", {}).get(LEGACY_COLUMN)
        if history and history[0] not in ("jsonb", "json"):
            problems.append(f"sessions.{LEGACY_COLUMN} is {history[0]}, not JSONB")
        return problems

    def other_tables(self) -> list[str]:
        return sorted(set(self.tables) - set(metadata.tables) - {"alembic_version"})


def inspect(conn: psycopg.Connection[Any]) -> Inspection:
    tables = {
        name: {c: (t, n) for c, t, n in zip(columns, types, nullable, strict=True)}
        for name, columns, types, nullable in conn.execute(QUERIES["inspect"]).fetchall()
    }
    revision = None
    if "alembic_version" in tables:
        row = conn.execute(QUERIES["alembic_revision"]).fetchone()
        revision = row[0] if row else None
    return Inspection(tables, revision)


def legacy_zone(name: str) -> ZoneInfo:
    """The zone the seed's TIMESTAMP columns were written in (its server's TimeZone)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r} (legacy time zone)") from None


# -- step 1: adoption ------------------------------------------------------------------------


def adopt(conn: psycopg.Connection[Any], found: Inspection, zone: ZoneInfo) -> None:
    """Bring the seed tables to revision 0001's shape and stamp 0001, in one transaction."""
    problems = found.adoption_problems()
    if problems:
        raise LegacyDatabaseError(
            "cannot adopt this TypeScript-era database: " + "; ".join(problems)
        )
    try:
        with conn.transaction():
            _adopt_tables(conn, zone)
    except psycopg.OperationalError:
        raise
    except psycopg.DatabaseError as exc:
        # Data the new rules refuse, e.g. a session without a user: the operator decides.
        raise LegacyDatabaseError(
            f"cannot adopt this TypeScript-era database: {_first_line(exc)}; nothing was changed"
        ) from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _adopt_tables(conn: psycopg.Connection[Any], zone: ZoneInfo) -> None:
    tables = list(CORE_TABLES)
    # TIMESTAMP -> timestamptz casts and the seed's now() defaults read this zone.
    conn.execute("SELECT set_config('TimeZone', %s, true)", [zone.key])
    conn.execute(QUERIES["create_missing_core_tables"])
    _replace_constraints(conn, tables)
    shapes = inspect(conn).tables
    for table, shape in CORE_TABLES.items():
        _alter_columns(conn, table, shape, shapes[table], before_backfill=True)
    conn.execute(QUERIES["adopt_backfill"])
    for table, shape in CORE_TABLES.items():
        _alter_columns(conn, table, shape, shapes[table], before_backfill=False)
    if shapes["sessions"][LEGACY_COLUMN][0] != "jsonb":
        conn.execute(QUERIES["history_to_jsonb"])
    for table, columns in _PRIMARY_KEYS.items():
        if not _has_primary_key(conn, table):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                    sql.Identifier(table),
                    sql.Identifier(f"pk_{table}"),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                )
            )
    conn.execute(QUERIES["adopt_constraints"])
    conn.execute(QUERIES["create_new_tables"])


def _replace_constraints(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """Drop the seed's own constraints and indexes; keep and rename the primary keys, which
    other subsystems' foreign keys may reference."""
    rows = conn.execute(QUERIES["core_constraints"], {"tables": tables}).fetchall()
    order = {"f": 0, "c": 1, "u": 2, "p": 3}
    for table, name, kind, columns in sorted(rows, key=lambda r: order[r[2]]):
        target = sql.Identifier(table)
        if kind == "p" and table in _PRIMARY_KEYS:
            if columns != _PRIMARY_KEYS[table]:
                raise LegacyDatabaseError(
                    f"cannot adopt: {table}'s primary key is ({', '.join(columns)}), "
                    f"expected ({', '.join(_PRIMARY_KEYS[table])})"
                )
            if name != f"pk_{table}":
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        target, sql.Identifier(name), sql.Identifier(f"pk_{table}")
                    )
                )
        else:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, sql.Identifier(name))
            )
    for (index,) in conn.execute(QUERIES["core_indexes"], {"tables": tables}).fetchall():
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))


def _alter_columns(
    conn: psycopg.Connection[Any],
    table: str,
    shape: tuple[ColumnShape, ...],
    current: Mapping[str, tuple[str, bool]],
    *,
    before_backfill: bool,
) -> None:
    """Before the backfill: add missing columns, convert types. After it: fill NULLs with the
    default, set defaults and NOT NULL."""
    for column in shape:
        target, name = sql.Identifier(table), sql.Identifier(column.name)
        existing = current.get(column.name)
        if before_backfill:
            if existing is None:
                statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}")
                conn.execute(statement.format(target, name, sql.SQL(column.type)))
            elif existing[0] != column.type:
                # timestamp -> timestamptz reads the wall-clock time in the session's TimeZone.
                statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}")
                type_ = sql.SQL(column.type)
                conn.execute(statement.format(target, name, type_, name, type_))
            continue
        default = sql.SQL(column.default) if column.default else None
        if default is None:
            statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT")
            conn.execute(statement.format(target, name))
        else:
            statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}")
            conn.execute(statement.format(target, name, default))
            if existing is None or existing[1]:
                fill = sql.SQL("UPDATE {} SET {} = DEFAULT WHERE {} IS NULL")
                conn.execute(fill.format(target, name, name))
        nullability = "DROP NOT NULL" if column.nullable else "SET NOT NULL"
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} {}").format(target, name, sql.SQL(nullability))
        )


def _has_primary_key(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint"
        " WHERE conrelid = to_regclass(%s) AND contype = 'p')",
        [table],
    ).fetchone()
    return bool(row and row[0])


# -- step 3: conversion of the histories -----------------------------------------------------


def quarantine_reason(element: object, max_bytes: int) -> str | None:
    """Why a legacy message breaks today's rules (the store's validation), or None."""
    if not isinstance(element, dict):
        return "not a {role, content} object"
    if element.get("role") not in ROLES:
        return "unknown role"
    content = element.get("content")
    if not isinstance(content, str):
        return "content is not text"
    if not content:
        return "empty content"
    if "\x00" in content:
        return "NUL in content"
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError:
        return "invalid Unicode"
    return f"over {max_bytes} bytes" if size > max_bytes else None


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
                f"legacy conversion stopped: {_first_line(exc)}; that batch was rolled back,"
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


# -- the whole upgrade -----------------------------------------------------------------------


def upgrade(
    url: str,
    options: ConversionOptions | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> None:
    """``sessionkeeper migrate``: adopt a TypeScript-era database if this is one, upgrade to
    head, and convert any legacy histories left. On any other database it is a plain upgrade."""
    options = options or ConversionOptions()
    zone = legacy_zone(options.time_zone)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LEGACY_LOCK_KEY])
        found = inspect(conn)
        if found.revision is None and not found.has_legacy_history:
            clash = sorted(set(found.tables) & set(CORE_TABLES))
            if clash:
                raise LegacyDatabaseError(
                    f"the database has tables named like sessionkeeper's ({', '.join(clash)})"
                    " but neither a migration history nor the TypeScript store's"
                    " sessions.messages column; refusing to touch it"
                )
        if found.needs_adoption:
            report(
                "TypeScript-era database found: adopting its tables in place"
                f" (TIMESTAMP values read as {zone.key} time)"
            )
            adopt(conn, found, zone)
            report("adopted: seed tables altered to revision 0001, missing tables created")
        migrate.upgrade(url)
        if found.has_legacy_history:
            totals, left = convert(conn, options, report)
            report(f"legacy conversion: {totals.summary()}")
            if left:
                report(
                    f"stopped after {totals.batches} batches as asked: {left} sessions still"
                    " hold legacy histories; run migrate again to continue"
                )
            else:
                report(f"every history converted; sessions.{LEGACY_COLUMN} dropped")


def plan(url: str, options: ConversionOptions | None = None) -> list[str]:
    """What ``upgrade`` would do (``sessionkeeper migrate --dry-run``); changes nothing."""
    options = options or ConversionOptions()
    zone = legacy_zone(options.time_zone)
    head = migrate.head_revision()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        found = inspect(conn)
        lines: list[str] = []
        if found.needs_adoption:
            lines += _adoption_plan(conn, found, zone, head)
        elif found.revision == head:
            lines.append(f"schema already at {head}")
        else:
            lines.append(f"would upgrade the schema from {found.revision or 'empty'} to {head}")
        if found.has_legacy_history:
            totals = survey(conn, options, zone)
            batches = -(-totals.sessions // options.batch_size)
            lines.append(
                f"would convert the histories of {totals.sessions} sessions in {batches} batches"
                f" of {options.batch_size}: {totals.summary()}"
            )
            lines.append(f"would then drop sessions.{LEGACY_COLUMN}")
    return lines


def _adoption_plan(
    conn: psycopg.Connection[Any], found: Inspection, zone: ZoneInfo, head: str
) -> list[str]:
    present = [t for t in CORE_TABLES if t in found.tables]
    rows = {t: _count(conn, t) for t in present}
    created = [t for t in metadata.tables if t not in found.tables]
    lines = [
        "TypeScript-era database: no migration history, histories in sessions.messages",
        f"would alter in place to revision 0001's shape (TIMESTAMP values read as {zone.key}"
        " time): " + ", ".join(f"{t} ({rows[t]} rows)" for t in present),
        "would create: " + ", ".join(created),
        f"would then upgrade from 0001 to {head}",
        "would leave untouched: " + (", ".join(found.other_tables()) or "(no other tables)"),
    ]
    lines += [f"REFUSED, would change nothing: {p}" for p in found.adoption_problems()]
    return lines


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
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
