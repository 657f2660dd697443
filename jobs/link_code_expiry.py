"""link_code_expiry: remove expired and used link codes, and stale lock-outs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base import (
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    delete_batches,
    job_params,
    uninterrupted,
)


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Expired or used codes are kept this long, so that a late redemption is told "expired"
    # rather than "invalid".
    retention_seconds: int = 3600
    # Length of the store's failed-redemption window: a failure row whose window ended and
    # whose lock-out (if any) is over can no longer lock anybody out.
    failure_window_seconds: int = 3600


def run(
    conn: Connection, settings: Settings, now: datetime, pause: Pause = uninterrupted
) -> JobResult:
    params = job_params(settings, now)
    codes, stopped = delete_batches(conn, "link_code_expiry", params, settings, pause)
    failures = 0
    if not stopped:
        failures, stopped = delete_batches(
            conn, "link_code_failures_expiry", params, settings, pause
        )
    return JobResult(codes + failures, {"codes": codes, "lockouts": failures}, stopped)
