"""checkpoint_retention: bound what the LangGraph checkpointer (store/integrations/langgraph.py)
keeps, which its reference saver cannot (it has no timestamps).

Two passes, each in committed batches of ``batch_size`` threads (killed half-way, the next
run goes on from what is left):

1. idle threads: a thread not written for ``idle_seconds`` goes with all its rows (0: off);
2. history: in every thread only the newest ``keep_latest`` checkpoints of each namespace
   stay (0: off), then the channel values and list lines no remaining checkpoint references
   go (``sk_langgraph_collect``).

A thread whose newest checkpoint has a pending interrupt (a graph waiting for a human) is
never removed as idle, and the newest checkpoint of a namespace is always kept, so a resume
always finds what it needs; values a kept checkpoint references are never collected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from store.config import StoreConfig
from store.settings import require

from .base import (
    STORE_DEFAULTS,
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
    # Threads per batch (each with all its rows).
    batch_size: int = 100
    # Checkpoints kept per thread and namespace, newest first (0: all).
    keep_latest: int = 20
    # A thread not written for this long goes whole (0: never).
    idle_seconds: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.keep_latest >= 0, "keep_latest", self.keep_latest, "0 or more")


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    idle, stopped = 0, False
    if settings.idle_seconds > 0:
        idle, stopped = delete_batches(conn, "checkpoint_retention_idle", params, settings, pause)
    trimmed = collected = 0
    if settings.keep_latest > 0 and not stopped:
        after = ""

        def trim(c: Connection) -> int:
            nonlocal after, trimmed, collected
            rows = c.execute(
                QUERIES["checkpoint_retention_threads"], {**params, "after": after}
            ).fetchall()
            threads = [row[0] for row in rows]
            if threads:
                after = threads[-1]
                step = {**params, "threads": threads}
                trimmed += c.execute(QUERIES["checkpoint_retention_trim"], step).rowcount
                row = c.execute(QUERIES["checkpoint_retention_collect"], step).fetchone()
                collected += row[0] if row else 0
            return len(threads)

        _, stopped = batches(conn, trim, settings, pause)
    details = {"idle_threads": idle, "checkpoints": trimmed, "values": collected}
    return JobResult(idle + trimmed + collected, details, stopped)
