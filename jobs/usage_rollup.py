"""usage_rollup: add raw ``usage_stats`` rows to the daily per-user, per-channel totals.

Each batch flags its rows ``rolled_up`` in the same statement that adds them to
``usage_daily``, so a row is counted exactly once however often the job runs, and a row that
arrives late (for a day already rolled up) is still counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base import (
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    batches,
    delete_batches,
    job_params,
    uninterrupted,
)
from .sql import QUERIES


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Rolled-up raw rows older than this are deleted; 0 keeps them.
    prune_after_seconds: int = 0


def run(
    conn: Connection, settings: Settings, now: datetime, pause: Pause = uninterrupted
) -> JobResult:
    params = job_params(settings, now)

    def roll(c: Connection) -> int:
        row = c.execute(QUERIES["usage_rollup"], params).fetchone()
        return int(row[0]) if row else 0

    rolled, stopped = batches(conn, roll, settings, pause)
    pruned = 0
    if settings.prune_after_seconds > 0 and not stopped:
        pruned, stopped = delete_batches(conn, "usage_prune", params, settings, pause)
    return JobResult(rolled + pruned, {"rolled_up": rolled, "pruned": pruned}, stopped)
