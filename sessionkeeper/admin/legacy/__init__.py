"""Adopting a database made by the original TypeScript system, in place (``sessionkeeper migrate``).

The seed created its tables itself, with no migration history: ``users``, ``sessions`` holding the
whole history in a JSONB array ``sessions.messages``, ``rate_limits``, ``usage_stats``,
``persons``, ``link_codes``, with ``TIMESTAMP`` (no time zone) columns and ``INT`` counters, next
to many tables of other subsystems that are none of our business. Such a database is recognised
by having ``sessions.messages`` and no Alembic version table, and upgraded in three steps:

1. **Adopt** (``adoption``, one transaction): the seed tables are altered into revision 0001's
   exact shape, taken from the revision itself (``target``), 0001's other tables are created
   and the database is stamped at 0001.
2. **Upgrade**: Alembic takes it from 0001 to head like any other database.
3. **Convert** (``conversion``) the histories in batches, one transaction each, each verified in
   SQL before its arrays are released; a message's keys besides role, content and timestamp
   become its ``extra``; messages the store's validation refuses are quarantined.
   When no array is left the column is dropped and the schema equals a fresh one.

``inspection`` finds out what a database holds; ``report`` is ``--dry-run``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import psycopg

from .. import migrate
from .adoption import adopt
from .conversion import (
    DEFAULT_BATCH_SIZE,
    ConversionOptions,
    ConversionTotals,
    convert,
    extra_fields,
    legacy_zone,
    message_time,
    quarantine_reason,
)
from .inspection import (
    LEGACY_COLUMN,
    QUARANTINE_TABLE,
    Inspection,
    LegacyDatabaseError,
    inspect,
)
from .report import plan
from .target import SEED_TABLES

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "LEGACY_LOCK_KEY",
    "QUARANTINE_TABLE",
    "ConversionOptions",
    "ConversionTotals",
    "Inspection",
    "LegacyDatabaseError",
    "extra_fields",
    "inspect",
    "message_time",
    "plan",
    "quarantine_reason",
    "upgrade",
]

# Session-level advisory lock held for a whole adoption and conversion ("sk-legc").
LEGACY_LOCK_KEY = 0x736B2D6C656763


def _unshown(what: str, done: int, total: int | None) -> None:
    """No progress shown (the default)."""


def upgrade(
    url: str,
    options: ConversionOptions | None = None,
    report: Callable[[str], None] = lambda line: None,
    progress: Callable[[str, int, int | None], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """``sessionkeeper migrate``: adopt a TypeScript-era database if this is one, upgrade to
    head, and convert any legacy histories left. On any other database it is a plain upgrade.
    ``progress(what, rows done, total or None)`` is called after each batch of the long work
    (a revision's backfill, the conversion); ``stop()`` is asked between two batches of the
    conversion (a revision always finishes)."""
    options = options or ConversionOptions()
    zone = legacy_zone(options.time_zone)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LEGACY_LOCK_KEY])
        found = inspect(conn)
        if found.revision is None and not found.has_legacy_history:
            clash = sorted(set(found.tables) & set(SEED_TABLES))
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
        shown = progress or _unshown
        migrate.upgrade(url, progress=lambda what, done: shown(what, done, None))
        if found.has_legacy_history:
            converted = functools.partial(shown, "legacy conversion")
            totals, left = convert(conn, options, report, converted, stop)
            report(f"legacy conversion: {totals.summary()}")
            if left:
                why = "when asked to stop" if stop() else "as asked"
                report(
                    f"stopped after {totals.batches} batches {why}: {left} sessions still"
                    " hold legacy histories; run migrate again to continue"
                )
            else:
                report(f"every history converted; sessions.{LEGACY_COLUMN} dropped")
