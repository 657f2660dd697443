"""rate_limit_cleanup: remove rate-limit windows that can no longer affect a decision.

rate_limits is partitioned by window_start (jobs/partitions.py): a partition is dropped whole
once every window in it has ended, i.e. once its end is older than the longest window the
store counts (a day) plus ``grace_seconds``; no row is deleted one by one (the tables have no
DEFAULT partition since revision 0022, so every row is in a time partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from store.config import LONGEST_RATE_WINDOW_SECONDS, StoreConfig

from . import partitions
from .base import STORE_DEFAULTS, Connection, JobResult, Pause, uninterrupted


@dataclass(frozen=True)
class Settings(partitions.DdlSettings):
    # Extra time a window is kept after it ended (0: removed as soon as it ended).
    grace_seconds: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    # A window starting in a partition ends at most the longest window after the partition's end.
    before = now - timedelta(seconds=LONGEST_RATE_WINDOW_SECONDS + settings.grace_seconds)
    dropped, dropped_rows, deferred = partitions.drop_expired(
        conn, "rate_limits", before, settings, pause
    )
    details = {
        "deleted": dropped_rows,
        "partitions_dropped": dropped,
        "partitions_deferred": deferred,
    }
    return JobResult(dropped_rows, details)
