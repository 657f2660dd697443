"""What every job shares: its result, its batch settings, the pause, and the batching loop."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from .sql import QUERIES

# Jobs take an autocommit connection: each ``conn.transaction()`` is then a real transaction.
Connection = psycopg.Connection[Any]
# ``pause(seconds)`` waits up to ``seconds`` between two batches and returns True when the run
# should stop instead of going on. The daemon passes its stop event's ``wait``: a stop request
# ends a pause at once, and ``pause(0)`` is just the stop check.
Pause = Callable[[float], bool]


def uninterrupted(seconds: float) -> bool:
    """The pause of a run that nothing stops (a test, a benchmark): sleeps, never stops it."""
    if seconds > 0:
        time.sleep(seconds)
    return False


@dataclass(frozen=True)
class BatchSettings:
    """The settings of the batching loop; every job's ``Settings`` extends them."""

    batch_size: int = 5000
    # Seconds to wait after each full batch, outside its transaction, leaving the CPU and the
    # disks to the online store meanwhile; 0 runs the batches back to back.
    pause_seconds: float = 0.0


def job_params(settings: Any, now: datetime) -> dict[str, Any]:
    """A job's settings and ``now`` as the named parameters of its statements."""
    return {"now": now, **dataclasses.asdict(settings)}


@dataclass
class JobResult:
    """What a run did: ``rows`` for the rows metric, ``details`` for the run ledger."""

    rows: int
    details: dict[str, Any] = field(default_factory=dict)
    # True when the run ended early because the daemon is stopping.
    stopped: bool = False


def batches(
    conn: Connection, step: Callable[[Connection], int], settings: BatchSettings, pause: Pause
) -> tuple[int, bool]:
    """Run ``step`` in one short transaction per batch until a batch comes back short.

    Between two batches (after a full one, its transaction committed) the loop calls
    ``pause(settings.pause_seconds)``: n batches make n - 1 pauses. Returns the rows handled
    and whether the loop stopped early because ``pause`` said so (a stop request never
    interrupts a batch half-way, and never waits out a pause).
    """
    total = 0
    while True:
        with conn.transaction():
            handled = step(conn)
        total += handled
        if handled < settings.batch_size:
            return total, False
        if pause(settings.pause_seconds):
            return total, True


def delete_batches(
    conn: Connection,
    query: str,
    params: Mapping[str, Any],
    settings: BatchSettings,
    pause: Pause,
) -> tuple[int, bool]:
    """``batches`` for a single statement whose row count is the batch's size."""
    statement = QUERIES[query]
    return batches(conn, lambda c: c.execute(statement, params).rowcount, settings, pause)
