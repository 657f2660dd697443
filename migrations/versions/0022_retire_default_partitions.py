"""retire the DEFAULT partitions of rate_limits and usage_stats, online

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

With a DEFAULT partition, every ATTACH locks it (ACCESS EXCLUSIVE, which every bot's generic
plan feels) and PostgreSQL refuses DETACH ... CONCURRENTLY. For each table, while bots write
(docs/partitions.md, "Retiring the DEFAULT partitions"):

1. Daily partitions are made for every UTC day the DEFAULT partition holds rows of, and for
   yesterday, today and tomorrow, so that no row the bots write now lacks a partition. Each is
   built outside the table and attached in one short transaction (``lock_timeout`` of a few
   milliseconds, retried) that first moves in the DEFAULT partition's rows of its range. While
   the DEFAULT partition exists, each such attach locks it, and every bot's statement on the
   table waits for that (docs/partitions.md, "Retiring the DEFAULT partitions"): these steps
   are as few as the days with rows there, usually none but the three.
2. One short transaction locks the table, checks that the DEFAULT partition is empty (a row
   that arrived meanwhile sends the revision back to step 1) and detaches it; then its foreign
   key is dropped (a catalog change on ``users``).
3. The days up to ``AHEAD_DAYS`` after today (what partition_maintenance keeps by default) are
   made, now without the DEFAULT partition: their attaches lock nothing a bot's write waits for
   but ``users``, briefly, for the foreign key.

The detached, empty ``<table>_default`` stays as a plain table (no row ever reaches it): the
statements of release 0.2.0's daemons still name it (their row-by-row cleanup, their partition
maintenance's lock and move). A later release drops it.

Every step can run again: a migration interrupted half-way is finished by the next
`sessionkeeper migrate`. The downgrade puts empty DEFAULT partitions back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from alembic import op
from psycopg import sql

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = {"rate_limits": "window_start", "usage_stats": "created_at"}
DAY = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# partition_maintenance's default `ahead`; the days around today made before the DEFAULT
# partition goes (a bot's clock a little behind or ahead, a turn across midnight).
AHEAD_DAYS = 7
AROUND_TODAY = (-1, 0, 1)
# A partition starting sooner than this is attached under the table's lock.
MARGIN = timedelta(minutes=10)
# The longest a bot may queue behind one of the revision's lock requests (less than half the
# server's deadlock_timeout: in a lock cycle with a bot, the revision is the one that yields).
LOCK_TIMEOUT_MS = 5
ATTEMPTS = 200
# Rounds of step 1 and 2 before giving up (a round is repeated only when rows keep arriving
# in the DEFAULT partition while it is retired).
ROUNDS = 5

LOCK_TIMEOUT = """
SELECT set_config('lock_timeout',
                  least({ms}, extract(epoch FROM current_setting('deadlock_timeout')::interval)
                              * 1000 / 2)::int || 'ms', true)
"""

BOUNDS = """
SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']*)''\\)'))[1]
           ::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']*)''\\)'))[1]
           ::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
"""


ATTACH = [
    "ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper})",
    "ALTER TABLE {partition} DROP CONSTRAINT {check}",
]


class RowsArrived(Exception):
    """A row reached the DEFAULT partition while it was being retired."""


def upgrade() -> None:
    # The steps need transactions of their own (short lock waits): what the migration did so
    # far is committed first.
    bind = op.get_bind()
    bind.commit()
    conn: Any = bind.connection.driver_connection
    conn.autocommit = True
    try:
        for table in KEYS:
            for _ in range(ROUNDS):
                if not _has_default(conn, table):
                    break
                _make_partitions(conn, table, _days_held(conn, table) | _around_today(conn))
                try:
                    _retire_default(conn, table)
                except RowsArrived:
                    continue
            else:
                raise RuntimeError(f"{table}_default kept receiving rows: run migrate again")
            _drop_foreign_keys(conn, f"{table}_default")
            _make_partitions(conn, table, _ahead(conn))
    finally:
        conn.autocommit = False


def _has_default(conn: Any, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
        (table,),
    ).fetchone()
    return row is not None


def _days_held(conn: Any, table: str) -> set[datetime]:
    """The UTC days the DEFAULT partition holds rows of."""
    query = sql.SQL(
        "SELECT DISTINCT to_timestamp(floor(extract(epoch FROM {key}) / 86400) * 86400)"
        " FROM {default}"
    ).format(key=sql.Identifier(KEYS[table]), default=sql.Identifier(f"{table}_default"))
    return {row[0] for row in conn.execute(query)}


def _today(conn: Any) -> datetime:
    today: datetime = conn.execute(
        "SELECT to_timestamp(floor(extract(epoch FROM now()) / 86400) * 86400)"
    ).fetchone()[0]
    return today


def _around_today(conn: Any) -> set[datetime]:
    return {_today(conn) + n * DAY for n in AROUND_TODAY}


def _ahead(conn: Any) -> set[datetime]:
    return {_today(conn) + n * DAY for n in range(AHEAD_DAYS + 1)}


def _missing(conn: Any, table: str, day: datetime) -> list[tuple[datetime, datetime]]:
    """The parts of [day, day + 1 day) no partition covers yet (a partition made with another
    interval, or the legacy one, may cover part of the day)."""
    existing = [(lower, upper) for lower, upper in conn.execute(BOUNDS, (table,))]
    cursor, end = day, day + DAY
    missing = []
    while cursor < end:
        holding = next(
            (
                upper
                for lower, upper in existing
                if (lower is None or lower <= cursor) and (upper is None or cursor < upper)
            ),
            None,
        )
        if holding is not None:
            cursor = holding
            continue
        upper = min([end, *(lower for lower, _ in existing if lower and lower > cursor)])
        missing.append((cursor, upper))
        cursor = upper
    return missing


def _make_partitions(conn: Any, table: str, days: set[datetime]) -> None:
    for day in sorted(days):
        for lower, upper in _missing(conn, table, day):
            _make_partition(conn, table, lower, upper)


def _make_partition(conn: Any, table: str, lower: datetime, upper: datetime) -> None:
    """Built outside the table (ACCESS SHARE on it), then attached in one short transaction
    that moves in the DEFAULT partition's rows of its range (ATTACH would refuse them)."""
    name = f"{table}_p{lower.astimezone(UTC):%Y%m%d_%H%M}"
    parts = {
        "parent": sql.Identifier(table),
        "partition": sql.Identifier(name),
        "default": sql.Identifier(f"{table}_default"),
        "check": sql.Identifier(f"ck_{name}_range"),
        "key": sql.Identifier(KEYS[table]),
        "lower": sql.Literal(lower),
        "upper": sql.Literal(upper),
    }
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {partition} (LIKE {parent} INCLUDING ALL);"
                " ALTER TABLE {partition} ADD CONSTRAINT {check}"
                " CHECK ({key} >= {lower} AND {key} < {upper})"
            ).format(**parts)
        )
    if not _has_default(conn, table):
        _locked(conn, [sql.SQL(step).format(**parts) for step in ATTACH])
        return
    steps = [
        # A range the bots may be writing now: a bot's row routed to the DEFAULT partition
        # before the attach would fail its new constraint after it, so they wait instead.
        "LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE" if lower <= _now(conn) + MARGIN else None,
        "LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE",
        "WITH moved AS (DELETE FROM {default} WHERE {key} >= {lower} AND {key} < {upper}"
        " RETURNING *) INSERT INTO {partition} SELECT * FROM moved",
        *ATTACH,
    ]
    _locked(conn, [sql.SQL(step).format(**parts) for step in steps if step])


def _retire_default(conn: Any, table: str) -> None:
    """Detach the emptied DEFAULT partition, under the table's lock for a catalog change."""
    parts = {"parent": sql.Identifier(table), "default": sql.Identifier(f"{table}_default")}
    steps = [
        "LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE",
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM {default}) THEN"
        " RAISE EXCEPTION 'rows arrived' USING ERRCODE = 'object_not_in_prerequisite_state';"
        " END IF; END $$",
        "ALTER TABLE {parent} DETACH PARTITION {default}",
    ]
    try:
        _locked(conn, [sql.SQL(step).format(**parts) for step in steps])
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise RowsArrived from exc


def _drop_foreign_keys(conn: Any, table: str) -> None:
    """The retired table's foreign keys: no row reaches it any more, and each keeps triggers
    on users that every erasure would run."""
    keys = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f'",
        (table,),
    ).fetchall()
    for (key,) in keys:
        drop = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}")
        _locked(conn, [drop.format(sql.Identifier(table), sql.Identifier(key))])


def _now(conn: Any) -> datetime:
    now: datetime = conn.execute("SELECT now()").fetchone()[0]
    return now


def _locked(conn: Any, statements: list[sql.Composable]) -> None:
    """``statements`` in one implicit transaction sent in one round trip (its locks are held
    for the server's work alone), each lock waited for at most LOCK_TIMEOUT_MS; refused, it is
    retried after a jittered pause (10 ms doubling up to 1 s)."""
    timeout = sql.SQL(LOCK_TIMEOUT).format(ms=sql.Literal(LOCK_TIMEOUT_MS))
    batch = sql.SQL("; ").join([timeout, *statements])
    _retry(lambda: conn.execute(batch))


def _retry(attempt: Callable[[], object]) -> None:
    for tried in range(1, ATTEMPTS + 1):
        try:
            attempt()
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if tried == ATTEMPTS:
                raise
            time.sleep(min(1.0, 0.01 * 2 ** (tried - 1)) * random.uniform(0.5, 1.5))


def downgrade() -> None:
    # Offline: the retired tables (empty) become DEFAULT partitions again.
    for table in KEYS:
        op.execute(
            f"DROP TABLE IF EXISTS {table}_default;"
            f" CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"
        )
