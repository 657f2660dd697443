"""``sessionkeeper migrate --dry-run``: what an upgrade would do, found without changing it."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from store.schema import metadata

from .. import migrate
from .conversion import ConversionOptions, legacy_zone, survey
from .inspection import LEGACY_COLUMN, Inspection, inspect
from .target import SEED_TABLES


def plan(url: str, options: ConversionOptions | None = None) -> list[str]:
    """What ``upgrade`` would do, one line per step; changes nothing."""
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
    present = [t for t in SEED_TABLES if t in found.tables]
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
