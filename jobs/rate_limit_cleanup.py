"""rate_limit_cleanup: delete rate-limit windows that can no longer affect a decision."""

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


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Extra time a window is kept after it ended (0: deleted as soon as it ended).
    grace_seconds: int = 0


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    done = main_then_retention(conn, "rate_limit_cleanup", None, params, settings, pause)
    return JobResult(done.main, {"deleted": done.main}, done.stopped)
