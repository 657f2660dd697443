"""usage_rollup: add raw ``usage_stats`` rows to the daily per-user, per-channel totals.

Each batch flags its rows ``rolled_up`` in the same statement that adds them to
``usage_daily``, so a row is counted exactly once however often the job runs, and a row that
arrives late (for a day already rolled up) is still counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from store.config import StoreConfig

from .base import (
    STORE_DEFAULTS,
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    job_params,
    main_then_retention,
    uninterrupted,
)
from .sql import QUERIES


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Rolled-up raw rows older than this are deleted; 0 keeps them.
    prune_after_seconds: int = 0


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)

    def roll(c: Connection) -> int:
        row = c.execute(QUERIES["usage_rollup"], params).fetchone()
        return int(row[0]) if row else 0

    prune = "usage_prune" if settings.prune_after_seconds > 0 else None
    done = main_then_retention(conn, roll, prune, params, settings, pause)
    details = {"rolled_up": done.main, "pruned": done.retention}
    return JobResult(done.main + done.retention, details, done.stopped)
