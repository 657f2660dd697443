"""partition_maintenance: keep time partitions of rate_limits and usage_stats made ahead of need.

Each run makes the partitions for the current slot and ``ahead`` more, per table (see
jobs/partitions.py), and reports how many lie ahead (``details["ahead"]``; the daemon also
exports it as ``sessionkeeper_partitions_ahead{table}``). A row no partition covers is
refused (``store.PartitionMissing``: the tables have no DEFAULT partition since revision 0022).
``sessionkeeper migrate`` runs it too, at the end of every migrate (docs/partitions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from store.config import StoreConfig
from store.settings import require

from . import partitions
from .base import STORE_DEFAULTS, Connection, JobResult, Pause, uninterrupted

DAY = 86400


def _interval_ok(seconds: int) -> bool:
    # Aligned to UTC days: a whole number of hours dividing a day, or a whole number of days.
    return seconds > 0 and seconds % 3600 == 0 and (DAY % seconds == 0 or seconds % DAY == 0)


@dataclass(frozen=True)
class Settings(partitions.DdlSettings):
    # Length of one partition of each table, in seconds.
    rate_limits_interval_seconds: int = DAY
    usage_stats_interval_seconds: int = DAY
    # Partitions kept ready after the current one.
    ahead: int = 7

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rate_limits_interval_seconds", "usage_stats_interval_seconds"):
            value = getattr(self, name)
            require(
                _interval_ok(value),
                name,
                value,
                "a whole number of hours dividing a day (3600 ... 86400), or of days",
            )
        require(self.ahead >= 1, "ahead", self.ahead, "a whole number of at least 1")

    def interval(self, table: str) -> timedelta:
        return timedelta(seconds=getattr(self, f"{table}_interval_seconds"))


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    made = deferred = 0
    lead: dict[str, int] = {}
    for table in partitions.KEYS:
        existing = partitions.list_partitions(conn, (table,))
        interval = settings.interval(table)
        for lower, upper in partitions.missing_ranges(
            existing, table, now, interval, settings.ahead
        ):
            if partitions.create(conn, table, lower, upper, settings, pause):
                made += 1
            else:
                deferred += 1
        lead[table] = partitions.ahead(partitions.list_partitions(conn, (table,)), table, now)
    # Partitions are no rows: the rows metric stays 0 for this job.
    return JobResult(0, {"created": made, "deferred": deferred, "ahead": lead})
