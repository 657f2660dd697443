"""The jobs by name: how to run each, its settings class and its default schedule.

The one list of jobs: the daemon, the CLI, the metrics and the configuration all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.config import StoreConfig

from . import (
    checkpoint_retention,
    link_code_expiry,
    partition_maintenance,
    proactive_reload,
    rate_limit_cleanup,
    session_archival,
    usage_rollup,
    user_retention,
)
from .base import Connection, JobResult, Pause


@dataclass(frozen=True)
class JobSpec:
    name: str
    run: Callable[[Connection, Any, datetime, Pause, StoreConfig], JobResult]
    settings: type[Any]
    default_schedule: str
    summary: str
    # Off unless configured: a job whose effect cannot be undone.
    enabled_by_default: bool = True
    # The rows a run would handle now, when cheap to count (the CLI's progress bar's total).
    backlog: Callable[[Connection, Any, datetime], int] | None = None


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "partition_maintenance",
            partition_maintenance.run,
            partition_maintenance.Settings,
            "10m",
            "make the time partitions of rate_limits and usage_stats ahead of need",
        ),
        JobSpec(
            "rate_limit_cleanup",
            rate_limit_cleanup.run,
            rate_limit_cleanup.Settings,
            "5m",
            "drop partitions of rate-limit windows that ended",
        ),
        JobSpec(
            "link_code_expiry",
            link_code_expiry.run,
            link_code_expiry.Settings,
            "10m",
            "delete expired and used link codes and stale lock-outs",
        ),
        JobSpec(
            "session_archival",
            session_archival.run,
            session_archival.Settings,
            "1h",
            "archive idle sessions (and purge old archives if configured)",
            backlog=session_archival.backlog,
        ),
        JobSpec(
            "proactive_reload",
            proactive_reload.run,
            proactive_reload.Settings,
            "1m",
            "refresh the proactive-user list",
        ),
        JobSpec(
            "usage_rollup",
            usage_rollup.run,
            usage_rollup.Settings,
            "5m",
            "roll usage_stats up into usage_daily (and drop old counted partitions)",
        ),
        JobSpec(
            "user_retention",
            user_retention.run,
            user_retention.Settings,
            "1d",
            "forget users inactive for inactive_seconds (off by default)",
            enabled_by_default=False,
        ),
        JobSpec(
            "checkpoint_retention",
            checkpoint_retention.run,
            checkpoint_retention.Settings,
            "1h",
            "trim LangGraph checkpoint histories, remove idle threads (off by default)",
            enabled_by_default=False,
        ),
    )
}
JOB_NAMES: tuple[str, ...] = tuple(JOBS)
