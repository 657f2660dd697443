"""Time partitions of ``rate_limits`` and ``usage_stats``: listing, making ahead, dropping.

Both tables are range-partitioned by time (revision 0013). Partitions are aligned to the epoch
(so a one-day interval gives UTC days) and named ``<table>_p<YYYYMMDD>_<HHMM>`` after their
start. ``<table>_default`` (the DEFAULT partition) takes any row no partition covers, so a
missing partition never refuses a bot's write; ``<table>_legacy`` (a database upgraded with
rows) is the table from before 0013, covering everything before the upgrade's cutover.

Partition DDL waits at most ``lock_timeout_ms`` for its locks: a partition that cannot be made
or dropped now is left for the next run (reported in the run's details as ``deferred``), so
the bots never queue behind the job for longer than that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from .base import Connection, committed
from .sql import QUERIES

# The partition key of each partitioned table.
KEYS = {"rate_limits": "window_start", "usage_stats": "created_at"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Partition:
    parent: str
    name: str
    is_default: bool
    lower: datetime | None  # None: MINVALUE (the legacy partition), or the default
    upper: datetime | None
    estimated_rows: float


def list_partitions(conn: Connection, tables: tuple[str, ...] = tuple(KEYS)) -> list[Partition]:
    rows = conn.execute(QUERIES["partitions"], {"tables": list(tables)}).fetchall()
    return [Partition(*row) for row in rows]


def slot_start(at: datetime, interval: timedelta) -> datetime:
    """The start of the epoch-aligned slot of length ``interval`` holding ``at``."""
    return EPOCH + ((at - EPOCH) // interval) * interval


def partition_name(table: str, lower: datetime) -> str:
    return f"{table}_p{lower.astimezone(UTC):%Y%m%d_%H%M}"


def ahead(partitions: list[Partition], table: str, now: datetime) -> int:
    """How many partitions of ``table`` follow, without a gap, the one holding ``now``
    (0 also when no partition holds ``now``: its rows go to the DEFAULT partition)."""
    ranged = [p for p in partitions if p.parent == table and not p.is_default]
    cursor: datetime | None = now
    found = -1
    while cursor is not None:
        holding = next(
            (p for p in ranged if (p.lower is None or p.lower <= cursor) and _below(cursor, p)),
            None,
        )
        if holding is None:
            break
        found += 1
        cursor = holding.upper
    return max(found, 0)


def _below(at: datetime, partition: Partition) -> bool:
    return partition.upper is None or at < partition.upper


def missing_ranges(
    partitions: list[Partition], table: str, now: datetime, interval: timedelta, count: int
) -> list[tuple[datetime, datetime]]:
    """The ranges to make so that partitions cover the slot holding ``now`` and ``count`` more
    slots: aligned slots, cut short where an existing partition (made with another interval,
    or the legacy one) already covers part of one."""
    ranged = [p for p in partitions if p.parent == table and not p.is_default]
    cursor = slot_start(now, interval)
    end = cursor + (count + 1) * interval
    missing: list[tuple[datetime, datetime]] = []
    while cursor < end:
        holding = next(
            (p for p in ranged if (p.lower is None or p.lower <= cursor) and _below(cursor, p)),
            None,
        )
        if holding is not None:
            if holding.upper is None:
                break
            cursor = holding.upper
            continue
        upper = slot_start(cursor, interval) + interval
        later = [p.lower for p in ranged if p.lower is not None and p.lower > cursor]
        upper = min([upper, *later])
        missing.append((cursor, upper))
        cursor = upper
    return missing


def _ddl(name: str, **parts: Any) -> sql.Composed:
    """A statement of queries.sql with its identifiers and literal bounds filled in."""
    values = {
        key: sql.Literal(value) if isinstance(value, datetime) else sql.Identifier(value)
        for key, value in parts.items()
    }
    return sql.SQL(QUERIES[name]).format(**values)


@contextmanager
def _as_owner(conn: Connection, table: str) -> Iterator[None]:
    """Run the block as ``table``'s owner: PostgreSQL lets only the owner attach, detach and
    drop partitions. The daemon's role holds only its own grants (NOINHERIT) and takes the
    owner's role here alone, on its autocommit connection, until the block ends."""
    row = conn.execute(QUERIES["partition_owner"], {"table": table}).fetchone()
    if row is None or not row[1]:
        yield
        return
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(row[0])))
    try:
        yield
    finally:
        conn.execute("RESET ROLE")


def _set_lock_timeout(conn: Connection, lock_timeout_ms: int) -> None:
    conn.execute(QUERIES["partition_lock_timeout"], {"lock_timeout_ms": lock_timeout_ms})


def create(
    conn: Connection, table: str, lower: datetime, upper: datetime, lock_timeout_ms: int
) -> bool:
    """Make and attach the partition [lower, upper) of ``table`` in one short transaction,
    moving in any rows of that range the DEFAULT partition holds. False: deferred (a lock was
    not granted within ``lock_timeout_ms``)."""
    name = partition_name(table, lower)
    parts: dict[str, Any] = {
        "parent": table,
        "partition": name,
        "default": f"{table}_default",
        "check": f"ck_{name}_range",
        "key": KEYS[table],
        "lower": lower,
        "upper": upper,
    }
    try:
        with _as_owner(conn, table), conn.transaction():
            _set_lock_timeout(conn, lock_timeout_ms)
            conn.execute(_ddl("partition_lock_for_create", parent=table))
            conn.execute(_ddl("partition_create", **parts))
            conn.execute(_ddl("partition_adopt_default_rows", **parts))
            conn.execute(_ddl("partition_attach", **parts))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
        return False
    return True


def drop(
    conn: Connection,
    partition: Partition,
    lock_timeout_ms: int,
    *,
    concurrently: bool,
    keep_if: Callable[[Connection, str], bool] | None = None,
) -> int | None:
    """Detach and drop ``partition``; returns its rows (counted exactly unless the planner's
    estimate is known: counting would read the whole partition), or None when it was deferred
    (lock not granted) or kept (``keep_if(conn, name)`` said so, asked after the detach, under
    its lock).

    ``concurrently`` (only possible when the table has no DEFAULT partition): DETACH ...
    CONCURRENTLY, which never blocks the bots' reads and writes of the table.
    """
    with _as_owner(conn, partition.parent):
        return _drop(conn, partition, lock_timeout_ms, concurrently=concurrently, keep_if=keep_if)


def _drop(
    conn: Connection,
    partition: Partition,
    lock_timeout_ms: int,
    *,
    concurrently: bool,
    keep_if: Callable[[Connection, str], bool] | None,
) -> int | None:
    parts = {"parent": partition.parent, "partition": partition.name}
    rows = _rows(conn, partition)
    kept = False
    try:
        if concurrently and keep_if is None:
            conn.execute(_ddl("partition_detach_concurrently", **parts))
            conn.execute(_ddl("partition_drop", **parts))
            return rows
        with conn.transaction():
            _set_lock_timeout(conn, lock_timeout_ms)
            conn.execute(_ddl("partition_lock_for_drop", parent=partition.parent))
            conn.execute(_ddl("partition_detach", **parts))
            if keep_if is not None and keep_if(conn, partition.name):
                kept = True
                raise psycopg.Rollback()
            conn.execute(_ddl("partition_drop", **parts))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
        return None
    return None if kept else rows


def _rows(conn: Connection, partition: Partition) -> int:
    if partition.estimated_rows >= 0:
        return int(partition.estimated_rows)
    row = conn.execute(_ddl("partition_count", partition=partition.name)).fetchone()
    return int(row[0]) if row else 0


def has_default(partitions: list[Partition], table: str) -> bool:
    return any(p.parent == table and p.is_default for p in partitions)


def expired(partitions: list[Partition], table: str, before: datetime) -> list[Partition]:
    """The range partitions of ``table`` whose whole range lies before ``before``."""
    return [
        p
        for p in partitions
        if p.parent == table and not p.is_default and p.upper is not None and p.upper <= before
    ]


def drop_expired(
    conn: Connection,
    table: str,
    before: datetime,
    lock_timeout_ms: int,
    keep_if: Callable[[Connection, str], bool] | None = None,
) -> tuple[int, int, int]:
    """Drop every partition of ``table`` that ended before ``before``: (partitions dropped,
    their rows, partitions deferred or kept)."""
    partitions = list_partitions(conn, (table,))
    concurrently = not has_default(partitions, table)
    dropped = rows = deferred = 0
    for partition in expired(partitions, table, before):
        removed = drop(conn, partition, lock_timeout_ms, concurrently=concurrently, keep_if=keep_if)
        if removed is None:
            deferred += 1
        else:
            committed(removed)
            dropped += 1
            rows += removed
    return dropped, rows, deferred
