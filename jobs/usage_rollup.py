"""usage_rollup: add raw ``usage_stats`` rows to the daily per-user, per-channel totals.

A watermark rollup (docs/partitions.md): every raw row carries the id of the transaction that
wrote it (``inserted_xid``), and ``usage_rollup_state.watermark`` says that every row below it is
in ``usage_daily``. A batch counts the rows from the watermark up to the oldest transaction still
running (every transaction below it has ended, so no row can appear there later) and moves the
watermark, in one transaction under the watermark row's lock: raw rows are read once and never
written, running twice or concurrently never counts a row twice, and a row is counted however
late it arrives (whatever its created_at, it is above the watermark until counted; no allowance
to tune). Days are UTC days of created_at.

Rows written before revision 0013 carry no inserted_xid: release 0.1.0's flagging statement
still counts them (``usage_rollup_legacy``), exactly once even beside a 0.1.0 daemon.

Retention (``prune_after_seconds``): partitions whose whole range is older than that, and whose
rows are all counted, are detached and dropped (no row is pruned one by one: there is no DEFAULT
partition since revision 0022).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import sql

from store.config import StoreConfig
from store.settings import require

from . import partitions
from .base import (
    STORE_DEFAULTS,
    Connection,
    JobResult,
    Pause,
    batches,
    job_params,
    uninterrupted,
)
from .sql import QUERIES

DAY = 86400


@dataclass(frozen=True)
class Settings(partitions.DdlSettings):
    # Raw rows older than this are removed once counted (whole partitions); 0 keeps them.
    prune_after_seconds: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.prune_after_seconds == 0 or self.prune_after_seconds >= DAY,
            "prune_after_seconds",
            self.prune_after_seconds,
            f"0 (keep raw rows) or at least {DAY} (a day: raw rows outlive their day)",
        )


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)

    def roll(c: Connection) -> int:
        row = c.execute(QUERIES["usage_rollup_lock"]).fetchone()
        watermark = int(row[0]) if row else 0
        result = c.execute(QUERIES["usage_rollup"], {**params, "watermark": watermark}).fetchone()
        return int(result[0]) if result else 0

    legacy, stopped = legacy_batches(conn, params, settings, pause)
    rolled = 0
    if not stopped:
        rolled, stopped = batches(conn, roll, settings, pause)
    details = {"rolled_up": legacy + rolled}
    pruned = 0
    if settings.prune_after_seconds > 0 and not stopped:
        before = now - timedelta(seconds=settings.prune_after_seconds)
        dropped, pruned, deferred = partitions.drop_expired(
            conn, "usage_stats", before, settings, pause, keep_if=_pending
        )
        details.update(partitions_dropped=dropped, partitions_kept=deferred)
    details["pruned"] = pruned
    return JobResult(legacy + rolled + pruned, details, stopped)


def legacy_batches(
    conn: Connection, params: dict[str, object], settings: Settings, pause: Pause
) -> tuple[int, bool]:
    """The legacy pass: rows from before revision 0013 that the flag says are not counted."""

    def step(c: Connection) -> int:
        row = c.execute(QUERIES["usage_rollup_legacy"], params).fetchone()
        return int(row[0]) if row else 0

    return batches(conn, step, settings, pause)


def _pending(conn: Connection, partition: str) -> bool:
    """Whether detached ``partition`` still holds rows the rollup has not counted."""
    statement = sql.SQL(QUERIES["usage_partition_pending"]).format(
        partition=sql.Identifier(partition)
    )
    row = conn.execute(statement).fetchone()
    return bool(row and row[0])
