"""Step 1, adoption: a TypeScript-era database is altered in place, in one transaction, to
revision 0001's shape (taken from the revision, see target.py), 0001's other tables are created
and the database is stamped at 0001. ``TIMESTAMP`` values are read as wall-clock times of the
legacy zone. Other subsystems' tables, and their foreign keys to ours, stay."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from store.queries import parse

from .inspection import LEGACY_COLUMN, Inspection, LegacyDatabaseError, first_line, inspect
from .target import SEED_TABLES, ColumnShape, Revision, revision_0001

QUERIES = MappingProxyType(parse(resources.files(__package__).joinpath("adoption.sql").read_text()))

# Seed primary keys adoption keeps (renamed to 0001's names), since other subsystems' foreign
# keys may reference them. rate_limits gets 0001's wider one (a row per window) instead.
KEPT_PRIMARY_KEYS = tuple(t for t in SEED_TABLES if t != "rate_limits")


def adopt(conn: psycopg.Connection[Any], found: Inspection, zone: ZoneInfo) -> None:
    """Bring the seed tables to revision 0001's shape and stamp 0001, in one transaction."""
    problems = found.adoption_problems()
    if problems:
        raise LegacyDatabaseError(
            "cannot adopt this TypeScript-era database: " + "; ".join(problems)
        )
    try:
        with conn.transaction():
            _adopt_tables(conn, zone, revision_0001())
    except psycopg.OperationalError:
        raise
    except psycopg.DatabaseError as exc:
        # Data the new rules refuse, e.g. a session without a user: the operator decides.
        raise LegacyDatabaseError(
            f"cannot adopt this TypeScript-era database: {first_line(exc)}; nothing was changed"
        ) from exc


def _adopt_tables(conn: psycopg.Connection[Any], zone: ZoneInfo, target: Revision) -> None:
    # TIMESTAMP -> timestamptz casts and the seed's now() defaults read this zone.
    conn.execute("SELECT set_config('TimeZone', %s, true)", [zone.key])
    # A seed that never used linking, limits or usage may lack some tables: the column steps
    # below fill an empty one like any other.
    for table in SEED_TABLES:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ()").format(sql.Identifier(table)))
    _replace_constraints(conn, target)
    shapes = inspect(conn).tables
    for table in SEED_TABLES:
        current = shapes.get(table, {})
        _alter_columns(conn, table, target.columns(table), current, before_backfill=True)
    conn.execute(QUERIES["adopt_backfill"])
    for table in SEED_TABLES:
        current = shapes.get(table, {})
        _alter_columns(conn, table, target.columns(table), current, before_backfill=False)
    if shapes["sessions"][LEGACY_COLUMN][0] != "jsonb":
        conn.execute(QUERIES["history_to_jsonb"])
    statements = []
    for table in SEED_TABLES:
        kept = table in KEPT_PRIMARY_KEYS and _has_primary_key(conn, table)
        statements += target.add_constraints(table, primary_key=not kept)
    for table in SEED_TABLES:
        statements += target.create_indexes(table)
    for table in target.tables:
        if table not in SEED_TABLES:
            statements += target.create_table(table)
    for statement in statements:
        conn.execute(statement)
    conn.execute(QUERIES["release_history_column"])
    conn.execute(QUERIES["create_version_table"])
    conn.execute(QUERIES["stamp"], {"revision": target.revision})


def _replace_constraints(conn: psycopg.Connection[Any], target: Revision) -> None:
    """Drop the seed's own constraints and indexes; keep and rename the primary keys, which
    other subsystems' foreign keys may reference."""
    tables = list(SEED_TABLES)
    rows = conn.execute(QUERIES["core_constraints"], {"tables": tables}).fetchall()
    order = {"f": 0, "c": 1, "u": 2, "p": 3}
    for table, name, kind, columns in sorted(rows, key=lambda r: order[r[2]]):
        source = sql.Identifier(table)
        if kind == "p" and table in KEPT_PRIMARY_KEYS:
            key = target.primary_key(table)
            expected = [c.name for c in key.columns]
            if columns != expected:
                raise LegacyDatabaseError(
                    f"cannot adopt: {table}'s primary key is ({', '.join(columns)}), "
                    f"expected ({', '.join(expected)})"
                )
            if name != key.name:
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        source, sql.Identifier(name), sql.Identifier(str(key.name))
                    )
                )
        else:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(source, sql.Identifier(name))
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
