"""Time partitions of ``rate_limits`` and ``usage_stats``: listing, making ahead, dropping.

Both tables are range-partitioned by time (revision 0013). Partitions are aligned to the epoch
(so a one-day interval gives UTC days) and named ``<table>_p<YYYYMMDD>_<HHMM>`` after their
start. ``<table>_legacy`` (a database upgraded with rows) is the table from before 0013,
covering everything before the upgrade's cutover. The tables have no DEFAULT partition any more
(revision 0022 retired them, docs/partitions.md): a row no partition covers is refused
(``store.PartitionMissing``), so partition_maintenance keeps ``ahead`` slots made and
``SessionkeeperPartitionsNotAhead`` fires long before they run out. The code below still
handles a table with a DEFAULT partition (a database between revisions 0013 and 0022).

Partition DDL never makes a bot wait for long (docs/partitions.md, "Locks"): each attempt
waits at most ``lock_timeout_ms`` (a few milliseconds) for each lock, so a bot queues behind
the job for no longer than that; an attempt refused is retried after a short jittered pause,
at a quieter moment, up to ``lock_attempts`` times, and a partition still not made or dropped
is left for the next run (reported in the run's details as ``deferred``). A new partition is
built outside the table, where no bot looks, and only attached under the lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from store.settings import require

from .base import BatchSettings, Connection, Pause, committed, uninterrupted
from .sql import QUERIES

T = TypeVar("T")

# The partition key of each partitioned table.
KEYS = {"rate_limits": "window_start", "usage_stats": "created_at"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DdlSettings(BatchSettings):
    """The settings of a job that makes or drops partitions: how its DDL waits for locks."""

    # Longest wait of one attempt for one lock of partition DDL: the longest a bot's statement
    # can queue behind the job's request. Capped at half the server's deadlock_timeout.
    lock_timeout_ms: int = 5
    # Attempts per partition, a short jittered pause apart, before it waits for the next run.
    lock_attempts: int = 40

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lock_timeout_ms", "lock_attempts"):
            value = getattr(self, name)
            require(value >= 1, name, value, "a whole number of at least 1")


# A partition starting sooner than this is attached under the table's lock (see create()).
ATTACH_MARGIN = timedelta(minutes=10)

# The pause before the n-th retry: doubling from 10 ms up to 1 s, jittered by half either way
# so that the retries of two replicas and a bot's rhythm do not keep meeting.
FIRST_RETRY_SECONDS = 0.01
LONGEST_RETRY_SECONDS = 1.0


def with_lock_retries(
    attempt: Callable[[], T], settings: DdlSettings, pause: Pause = uninterrupted
) -> T | None:
    """``attempt()`` (one transaction of DDL under ``lock_timeout_ms``) until it gets its locks:
    None when every attempt was refused, or a stop was asked during a pause."""
    for tried in range(1, settings.lock_attempts + 1):
        try:
            return attempt()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if tried == settings.lock_attempts:
                return None
            wait = min(LONGEST_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (tried - 1))
            if pause(wait * random.uniform(0.5, 1.5)):
                return None
    return None


@dataclass(frozen=True)
class Partition:
    parent: str
    name: str
    is_default: bool
    lower: datetime | None  # None: MINVALUE (the legacy partition), or the default
    upper: datetime | None
    estimated_rows: float
    detach_pending: bool = False  # a DETACH ... CONCURRENTLY cancelled half-way


def ddl_refused(conn: Connection, tables: tuple[str, ...] = tuple(KEYS)) -> list[str]:
    """The tables whose partitions the connected role may not make or drop: PostgreSQL lets
    only the table's owner, and the members of its role (see _as_owner), do that."""
    rows = conn.execute(QUERIES["partition_ddl_refused"], {"tables": list(tables)}).fetchall()
    return [name for (name,) in rows]


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
    (0 also when no partition holds ``now``: the bots' rows of now are refused)."""
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
    """A statement of queries.sql with its identifiers and literal values filled in."""
    values = {
        key: sql.Literal(value) if isinstance(value, datetime | int) else sql.Identifier(value)
        for key, value in parts.items()
    }
    return sql.SQL(QUERIES[name]).format(**values)


def _locked(conn: Connection, settings: DdlSettings, *statements: sql.Composable) -> None:
    """``statements`` in one transaction under ``lock_timeout_ms``, sent in one round trip: the
    locks they take are held for the server's work only, never for a client's turn (a busy
    daemon's thread may wait milliseconds for the CPU between two statements)."""
    if not conn.autocommit:
        raise ValueError("partition DDL needs an autocommit connection")
    timeout = _ddl("partition_lock_timeout", lock_timeout_ms=settings.lock_timeout_ms)
    conn.execute(sql.SQL("; ").join([timeout, *statements]))


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


def create(
    conn: Connection,
    table: str,
    lower: datetime,
    upper: datetime,
    settings: DdlSettings,
    pause: Pause = uninterrupted,
) -> bool:
    """Make the partition [lower, upper) of ``table`` and attach it (with a DEFAULT partition:
    moving in any rows of that range it holds). False: deferred (its locks were not granted in
    time).

    The table is built outside ``table`` first (``CREATE TABLE ... LIKE`` takes only ACCESS
    SHARE on it), with a CHECK that proves its range, so that ATTACH neither blocks the bots'
    writes to the table (it takes SHARE UPDATE EXCLUSIVE) nor scans the new partition: the
    lock that remains (users, for the cloned foreign key) is held for the milliseconds of the
    attach itself. With a DEFAULT partition, ATTACH also locks it, and a range that has begun
    by the server's clock (a partition made late) locks the table too: the bots may be routing
    rows of it to the DEFAULT partition right now."""
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
    with _as_owner(conn, table):
        with conn.transaction():
            # A table left by an earlier deferred attempt is attached as it is.
            if conn.execute(QUERIES["partition_exists"], {"name": name}).fetchone() is None:
                conn.execute(_ddl("partition_create", **parts))
            # The clock the rows' timestamps come from: the server's, not the daemon's.
            margin = {"lower": lower - ATTACH_MARGIN}
            row = conn.execute(QUERIES["partition_begun"], margin).fetchone()
            begun = bool(row and row[0])
            defaulted = has_default(list_partitions(conn, (table,)), table)

        steps = ["partition_attach"]
        if defaulted:
            steps[:0] = ["partition_lock_default", "partition_adopt_default_rows"]
        if defaulted and begun:
            steps.insert(0, "partition_lock_parent")

        def attach() -> bool:
            _locked(conn, settings, *(_ddl(step, **parts) for step in steps))
            return True

        return with_lock_retries(attach, settings, pause) is not None


def drop(
    conn: Connection,
    partition: Partition,
    settings: DdlSettings,
    pause: Pause = uninterrupted,
    *,
    concurrently: bool,
    keep_if: Callable[[Connection, str], bool] | None = None,
) -> int | None:
    """Detach and drop ``partition``; returns its rows (counted exactly unless the planner's
    estimate is known: counting would read the whole partition), or None when it was deferred
    (locks not granted) or kept (``keep_if(conn, name)`` said so).

    Three short steps, none holding a lock a bot waits for longer than a catalog change: the
    detach (``concurrently``, only possible when the table has no DEFAULT partition: DETACH ...
    CONCURRENTLY, which never blocks the bots; a partition left "detach pending" by an earlier
    one is finished with FINALIZE), the drop of the detached table's foreign keys
    (users, ACCESS EXCLUSIVE), and the drop of the table (nothing a bot uses). ``keep_if`` is
    asked before the detach and again after it, when no row can arrive any more; a partition
    kept only then is attached again.
    """
    with _as_owner(conn, partition.parent):
        return _drop(conn, partition, settings, pause, concurrently=concurrently, keep_if=keep_if)


def _drop(
    conn: Connection,
    partition: Partition,
    settings: DdlSettings,
    pause: Pause,
    *,
    concurrently: bool,
    keep_if: Callable[[Connection, str], bool] | None,
) -> int | None:
    parts = {"parent": partition.parent, "partition": partition.name}
    # (A pending partition's rows are out of every statement's reach, the rollup's too: it is
    # detached first, and attached again below if it must stay.)
    if keep_if is not None and not partition.detach_pending and keep_if(conn, partition.name):
        return None
    rows = _rows(conn, partition)
    if partition.detach_pending or concurrently:
        if not _detach_concurrently(conn, partition, settings, pause):
            return None
    elif with_lock_retries(lambda: _detach(conn, parts, settings), settings, pause) is None:
        return None
    if keep_if is not None and keep_if(conn, partition.name):
        _reattach(conn, partition, settings)
        return None
    # Detached, it is no partition any more: it must go now, whatever a stop request says.
    _until_done(lambda: _drop_foreign_keys(conn, parts, settings), settings)
    conn.execute(_ddl("partition_drop", **parts))
    return rows


def _until_done(attempt: Callable[[], bool], settings: DdlSettings) -> None:
    """``attempt`` retried until it gets its locks: for a step that cannot be left half-done.
    Each attempt still waits at most lock_timeout_ms, so the bots never wait longer."""
    while with_lock_retries(attempt, settings) is None:
        pass


def _detach_concurrently(
    conn: Connection, partition: Partition, settings: DdlSettings, pause: Pause
) -> bool:
    """DETACH ... CONCURRENTLY, or FINALIZE for a partition left pending; False: deferred.

    Every lock it waits for (the transactions still using the partition, users for the
    detached table's foreign-key triggers) is waited for at most lock_timeout_ms: a bot never
    queues behind it for longer. Refused after the partition was marked, it stays pending
    (invisible to new statements) and FINALIZE is retried, now or on the next run."""
    parts = {"parent": partition.parent, "partition": partition.name}
    pending = partition.detach_pending
    conn.execute(_ddl("partition_session_lock_timeout", lock_timeout_ms=settings.lock_timeout_ms))
    try:
        if not pending:
            try:
                conn.execute(_ddl("partition_detach_concurrently", **parts))
                return True
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                pending = _pending_detach(conn, partition)
                if not pending:
                    return False  # refused before it marked the partition: the next run
    finally:
        conn.execute("RESET lock_timeout")

    def finalize() -> bool:
        _locked(conn, settings, _ddl("partition_detach_finalize", **parts))
        return True

    return with_lock_retries(finalize, settings, pause) is not None


def _pending_detach(conn: Connection, partition: Partition) -> bool:
    now = list_partitions(conn, (partition.parent,))
    return any(p.name == partition.name and p.detach_pending for p in now)


def _detach(conn: Connection, parts: dict[str, Any], settings: DdlSettings) -> bool:
    lock = _ddl("partition_lock_for_detach", parent=parts["parent"])
    _locked(conn, settings, lock, _ddl("partition_detach", **parts))
    return True


def _drop_foreign_keys(conn: Connection, parts: dict[str, Any], settings: DdlSettings) -> bool:
    keys = conn.execute(QUERIES["partition_foreign_keys"], {"name": parts["partition"]})
    drops = [
        _ddl("partition_drop_foreign_key", **parts, constraint=constraint)
        for (constraint,) in keys.fetchall()
    ]
    if drops:
        _locked(conn, settings, *drops)
    return True


def _reattach(conn: Connection, partition: Partition, settings: DdlSettings) -> None:
    bounds = {
        "lower": sql.Literal(partition.lower) if partition.lower else sql.SQL("MINVALUE"),
        "upper": sql.Literal(partition.upper),
    }
    statement = sql.SQL(QUERIES["partition_reattach"]).format(
        parent=sql.Identifier(partition.parent),
        partition=sql.Identifier(partition.name),
        **bounds,
    )

    def attach() -> bool:
        _locked(conn, settings, statement)
        return True

    # Its rows are uncounted: it must come back.
    _until_done(attach, settings)


def _rows(conn: Connection, partition: Partition) -> int:
    if partition.estimated_rows >= 0:
        return int(partition.estimated_rows)
    row = conn.execute(_ddl("partition_count", partition=partition.name)).fetchone()
    return int(row[0]) if row else 0


def detach_concurrently(server_version: int, *, has_default: bool, citus: bool) -> bool:
    """Whether partitions are detached with ``DETACH ... CONCURRENTLY``: PostgreSQL 14 and later
    (``server_version`` as libpq reports it, 150004 for 15.4), a table without a DEFAULT
    partition, and no Citus (which refuses ``DETACH ... CONCURRENTLY`` and ``FINALIZE`` on a
    distributed table). Otherwise the plain ``DETACH``, which holds the table in ACCESS
    EXCLUSIVE mode for the milliseconds of the detach (docs/partitions.md, "Locks")."""
    return server_version >= 140000 and not has_default and not citus


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
    settings: DdlSettings,
    pause: Pause = uninterrupted,
    keep_if: Callable[[Connection, str], bool] | None = None,
    server_version: int | None = None,
) -> tuple[int, int, int]:
    """Drop every partition of ``table`` that ended before ``before``: (partitions dropped,
    their rows, partitions deferred or kept). ``server_version`` decides the detach (see
    detach_concurrently); the connected server's unless given (tests take the plain path on a
    server that has both)."""
    partitions = list_partitions(conn, (table,))
    citus = conn.execute(QUERIES["partition_citus"]).fetchone() is not None
    concurrently = detach_concurrently(
        server_version or conn.info.server_version,
        has_default=has_default(partitions, table),
        citus=citus,
    )
    dropped = rows = deferred = 0
    blocked = False
    # A partition left "detach pending" first: until it is finished, PostgreSQL refuses every
    # other DETACH ... CONCURRENTLY of the table.
    for partition in sorted(expired(partitions, table, before), key=lambda p: not p.detach_pending):
        if blocked:
            deferred += 1
            continue
        removed = drop(conn, partition, settings, pause, concurrently=concurrently, keep_if=keep_if)
        if removed is None:
            deferred += 1
            blocked = concurrently and _pending_detach(conn, partition)
        else:
            committed(removed)
            dropped += 1
            rows += removed
    return dropped, rows, deferred
