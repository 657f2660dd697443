"""link_code_expiry: remove expired and used link codes, and stale lock-outs.

A failure row goes once the store's failed-redemption window (``link_failure_window``, a store
setting) has ended, its lock-out, if any, is over and no failure of the last 24 hours is left
for the daily cap (``link_max_daily_failures``): then it can no longer lock anybody out. Erased
accounts' records (``link_code_erased_failures``) go on the same terms.
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
    delete_batches,
    job_params,
    main_then_retention,
    uninterrupted,
)


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Expired or used codes are kept this long, so that a late redemption is told "expired"
    # rather than "invalid".
    retention_seconds: int = 3600


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    done = main_then_retention(
        conn, "link_code_expiry", "link_code_failures_expiry", params, settings, pause
    )
    lockouts, stopped = done.retention, done.stopped
    if not stopped:
        erased, stopped = delete_batches(
            conn, "link_code_erased_failures_expiry", params, settings, pause
        )
        lockouts += erased
    details = {"codes": done.main, "lockouts": lockouts}
    return JobResult(done.main + lockouts, details, stopped)
