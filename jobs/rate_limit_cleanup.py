"""rate_limit_cleanup: delete rate-limit windows that can no longer affect a decision."""

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
    # Extra time a window is kept after it ended (0: deleted as soon as it ended).
    grace_seconds: int = 0


def run(
    conn: Connection, settings: Settings, now: datetime, pause: Pause = uninterrupted
) -> JobResult:
    params = job_params(settings, now)
    deleted, stopped = delete_batches(conn, "rate_limit_cleanup", params, settings, pause)
    return JobResult(deleted, {"deleted": deleted}, stopped)
