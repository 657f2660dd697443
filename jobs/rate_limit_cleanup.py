"""rate_limit_cleanup: delete rate-limit windows that can no longer affect a decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base import Connection, JobResult, StopCheck, delete_batches, job_params, never


@dataclass(frozen=True)
class Settings:
    batch_size: int = 5000
    # Extra time a window is kept after it ended (0: deleted as soon as it ended).
    grace_seconds: int = 0


def run(
    conn: Connection, settings: Settings, now: datetime, should_stop: StopCheck = never
) -> JobResult:
    params = job_params(settings, now)
    deleted, stopped = delete_batches(
        conn, "rate_limit_cleanup", params, settings.batch_size, should_stop
    )
    return JobResult(deleted, {"deleted": deleted}, stopped)
