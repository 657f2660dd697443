"""One run of one job: the lock, the run ledger, the job, and a report for metrics and logs.

Used by the daemon for scheduled runs, by ``sessionkeeper jobs run`` for manual ones, and by
benchmarks. A run that fails raises ``JobFailed`` (so that APScheduler reports it as an error
event) carrying the same report a successful run returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from store.config import StoreConfig
from store.connection import redact

from . import ledger
from .base import STORE_DEFAULTS, Connection, Pause, ProgressListener, tracking, uninterrupted
from .locking import job_lock
from .registry import JOBS
from .window import Window

log = logging.getLogger("sessionkeeper.jobs")

ConnectionSource = Callable[[], AbstractContextManager[Connection]]
DEFAULT_LEDGER_KEEP_SECONDS = 30 * 86400
# Why a run stopped, in its ledger details, when its window closed (not a stop request).
WINDOW_CLOSED = "window closed"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunReport:
    job: str
    outcome: str  # success, failure, skipped or stopped
    rows: int
    duration_seconds: float
    finished_at: float  # Unix time
    run_id: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class JobFailed(Exception):
    def __init__(self, report: RunReport) -> None:
        super().__init__(f"job {report.job} failed: {report.error}")
        self.report = report


def describe_error(exc: BaseException) -> str:
    """One password-free line naming the error."""
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))


def run_job(
    connect: ConnectionSource,
    name: str,
    settings: Any,
    *,
    replica_id: str,
    now: datetime | None = None,
    slot: str | None = None,
    pause: Pause = uninterrupted,
    ledger_keep_seconds: int = DEFAULT_LEDGER_KEEP_SECONDS,
    store: StoreConfig = STORE_DEFAULTS,
    progress: ProgressListener | None = None,
    backlog: Callable[[int | None], None] | None = None,
    window: Window | None = None,
    clock: Callable[[], datetime] = utc_now,
    begin: Callable[[], None] = lambda: None,
) -> RunReport:
    """Run job ``name`` once unless another replica holds its lock or already ran ``slot``.

    ``slot`` names the schedule slot of a scheduled run (None for a manual run): replicas
    firing for the same slot run the job once between them. ``pause`` is called between the
    job's batches (see ``jobs.base.batches``); a run it stops is recorded as ``stopped`` (and,
    as release 0.2.0 recorded it, with ``"stopped": true`` in its details). ``store`` holds
    the store's settings some jobs share (the link-code failure window, the proactive channel).
    ``progress`` is told the rows committed after each batch; ``backlog`` is told, before the
    first batch, the rows the run has to do if the job can count them (else None). ``begin`` is
    called once the run holds the lock and has its ledger row, before its first batch (the
    daemon's yield starts measuring there: a skipped run measures nothing).

    With a ``window``, a run starting outside it is skipped (a scheduled one is recorded once
    per closed period: ``ledger.window_skipped``), and a run in progress stops at
    the first batch boundary where ``clock()`` is past the window's end (``stopped``, with
    ``"reason": "window closed"`` in its details); the next run resumes the work.
    """
    spec = JOBS[name]
    started = time.monotonic()
    now = now or clock()
    details: dict[str, Any] = {"slot": slot} if slot else {"trigger": "manual"}
    if window is not None:
        details["window"] = str(window)
        pause = _within(window, clock, pause, details)
    closed = window if window is not None and not window.is_open(now) else None
    run_id: int | None = None
    skip_reason: str | None = None
    failure: BaseException | None = None
    recorded = False
    rows = 0
    try:
        with connect() as conn, job_lock(conn, name) as taken:
            if closed is not None:
                skip_reason = outside = f"outside its window {closed}"
            elif not taken:
                skip_reason = "another replica holds the job's lock"
            elif slot is not None and ledger.slot_done(conn, name, slot):
                skip_reason = "another replica already ran this slot"
            if closed is not None and slot is not None:
                # A scheduled slot outside the window: one row per closed period, kept by the
                # lock's holder (a replica without the lock leaves it to the holder, which
                # records this slot too, or is a run the window's close stops).
                opens = details["window_opens"] = closed.next_open(now).isoformat()
                if taken:
                    ledger.window_skipped(
                        conn,
                        name,
                        replica_id,
                        outside,
                        details,
                        slot=slot,
                        window=str(closed),
                        window_opens=opens,
                    )
            elif skip_reason:
                ledger.skipped(conn, name, replica_id, skip_reason, details)
            else:
                ledger.sweep_interrupted(conn, name)
                run_id = ledger.start(conn, name, replica_id, details)
                try:
                    begin()
                    if backlog is not None:
                        backlog(spec.backlog(conn, settings, now) if spec.backlog else None)
                    with tracking(progress) as tracked:
                        try:
                            result = spec.run(conn, settings, now, pause, store)
                        finally:
                            # Batches committed before a failure stay done: they count.
                            rows = tracked.rows
                except Exception as exc:
                    failure = exc
                    # Still under the lock when the connection survived the error.
                    recorded = _record_failure(
                        lambda: nullcontext(conn), run_id, exc, rows, quiet=True
                    )
                else:
                    rows = result.rows
                    details.update(result.details)
                    if result.stopped:
                        details["stopped"] = True
                    outcome = "stopped" if result.stopped else "success"
                    ledger.finish(conn, run_id, outcome, rows=rows, details=details)
                    ledger.prune(conn, name, ledger_keep_seconds)
    except Exception as exc:  # the connection, the lock or the ledger itself failed
        failure = failure or exc

    duration = time.monotonic() - started
    if failure is not None:
        if run_id is not None and not recorded:
            # The run's own connection may be what broke: try a fresh one.
            _record_failure(connect, run_id, failure, rows)
        error = describe_error(failure)
        report = RunReport(name, "failure", rows, duration, time.time(), run_id, error, details)
        raise JobFailed(report) from failure
    outcome = "skipped" if skip_reason else "stopped" if details.get("stopped") else "success"
    return RunReport(name, outcome, rows, duration, time.time(), run_id, skip_reason, details)


def _within(
    window: Window, clock: Callable[[], datetime], pause: Pause, details: dict[str, Any]
) -> Pause:
    """``pause``, and a stop at the boundary where the window has closed (checked on both
    sides of the pause: a long pause may outlast the window)."""

    def closed() -> bool:
        if window.is_open(clock()):
            return False
        details["reason"] = WINDOW_CLOSED
        return True

    def paused(seconds: float) -> bool:
        return closed() or pause(seconds) or closed()

    return paused


def _record_failure(
    connect: ConnectionSource,
    run_id: int,
    failure: BaseException,
    rows: int,
    *,
    quiet: bool = False,
) -> bool:
    """Mark run ``run_id`` failed after committing ``rows``; False (logged unless ``quiet``)
    if the ledger is unreachable."""
    try:
        with connect() as conn:
            ledger.finish(conn, run_id, "failure", rows=rows, error=describe_error(failure))
    except Exception as exc:
        if not quiet:
            log.warning(
                "could not record the failure of run %d (%s); the job's next run marks it failed",
                run_id,
                describe_error(exc),
            )
        return False
    return True
