"""What every job shares: its result, its batch settings, the pause, and the batching loops."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from store.config import StoreConfig
from store.settings import CENTURY_SECONDS, require

from .sql import QUERIES

# Jobs take an autocommit connection: each ``conn.transaction()`` is then a real transaction.
Connection = psycopg.Connection[Any]
# ``pause(seconds)`` waits up to ``seconds`` between two batches and returns True when the run
# should stop instead of going on. The daemon passes its stop event's ``wait``: a stop request
# ends a pause at once, and ``pause(0)`` is just the stop check.
Pause = Callable[[float], bool]
# One batch of a pass: does its work on the connection (inside the batch's transaction) and
# returns how many rows it handled; fewer than ``batch_size`` ends the pass.
Batch = Callable[[Connection], int]
# The store's settings when a job is called without them (tests, benchmarks).
STORE_DEFAULTS = StoreConfig()


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

    def __post_init__(self) -> None:
        # Every number a job takes is a size, a count or a span of seconds; at most a century,
        # so that now minus it stays a time PostgreSQL and Python can hold.
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            minimum = 1 if item.name == "batch_size" else 0
            kind = "a whole number" if isinstance(value, int) else "a number"
            require(
                # isfinite() overflows on an int beyond a float; an int is finite anyway.
                (isinstance(value, int) or math.isfinite(value))
                and minimum <= value <= CENTURY_SECONDS,
                item.name,
                value,
                f"{kind} from {minimum} to {CENTURY_SECONDS}",
            )


def job_params(settings: Any, now: datetime, store: StoreConfig) -> dict[str, Any]:
    """A job's settings and ``now`` as the named parameters of its statements, with the
    store's settings that the jobs' statements share with the store (named as in StoreConfig:
    the store owns them, a job never declares them again)."""
    return {
        "now": now,
        **dataclasses.asdict(settings),
        "link_failure_window": store.link_failure_window,
        "proactive_channel": store.proactive_channel,
    }


@dataclass
class JobResult:
    """What a run did: ``rows`` for the rows metric, ``details`` for the run ledger."""

    rows: int
    details: dict[str, Any] = field(default_factory=dict)
    # True when the run ended early because the daemon is stopping.
    stopped: bool = False


# Told the rows committed so far after each batch (the CLI's progress bar); jobs know no UI.
ProgressListener = Callable[[int], None]


@dataclass
class Progress:
    """Rows a run has committed so far: what its report says should it fail later."""

    rows: int = 0
    listener: ProgressListener | None = None


_progress: ContextVar[Progress | None] = ContextVar("job_progress", default=None)


@contextlib.contextmanager
def tracking(listener: ProgressListener | None = None) -> Iterator[Progress]:
    """Count the rows the job run in this block commits (``committed``), telling ``listener``."""
    progress = Progress(listener=listener)
    token = _progress.set(progress)
    try:
        yield progress
    finally:
        _progress.reset(token)


def committed(rows: int) -> None:
    """Record ``rows`` whose transaction has committed (batches call it after each commit)."""
    progress = _progress.get()
    if progress is not None:
        progress.rows += rows
        if progress.listener is not None:
            progress.listener(progress.rows)


def batches(
    conn: Connection, step: Batch, settings: BatchSettings, pause: Pause
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
        committed(handled)
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


@dataclass(frozen=True)
class Passes:
    """What ``main_then_retention`` did: rows of each pass, and whether a stop cut it short."""

    main: int
    retention: int
    stopped: bool


def main_then_retention(
    conn: Connection,
    main: Batch | str,
    retention: str | None,
    params: Mapping[str, Any],
    settings: BatchSettings,
    pause: Pause,
) -> Passes:
    """The shape most jobs share: the main pass in batches (``main``: a step, or the name of
    one statement whose row count is the batch's size), then, unless the run was stopped, a
    retention pass deleting in batches with the statement named ``retention`` (None: no
    retention pass, e.g. while the job's retention setting is 0)."""
    if isinstance(main, str):
        done, stopped = delete_batches(conn, main, params, settings, pause)
    else:
        done, stopped = batches(conn, main, settings, pause)
    removed = 0
    if retention is not None and not stopped:
        removed, stopped = delete_batches(conn, retention, params, settings, pause)
    return Passes(done, removed, stopped)
