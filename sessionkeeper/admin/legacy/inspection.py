"""What a database holds, and whether it is a TypeScript-era one that adoption can take."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import psycopg

from store.errors import StoreError
from store.queries import parse
from store.schema import metadata

from .target import SEED_TABLES, revision_0001

QUERIES = MappingProxyType(
    parse(resources.files(__package__).joinpath("inspection.sql").read_text())
)

LEGACY_COLUMN = "messages"  # sessions.messages, the seed's JSONB history
QUARANTINE_TABLE = "legacy_quarantined_messages"


class LegacyDatabaseError(StoreError):
    """The database cannot be adopted or converted as it is; nothing was changed by the step."""


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
        target = revision_0001()
        for table in SEED_TABLES:
            known = {c.name for c in target.columns(table)}
            known |= {LEGACY_COLUMN} if table == "sessions" else set()
            unknown = sorted(set(self.tables.get(table, {})) - known)
            problems += [f"column {table}.{c} is unknown to sessionkeeper" for c in unknown]
        ours = (set(metadata.tables) | {"alembic_version"}) - set(SEED_TABLES)
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
