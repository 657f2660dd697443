"""The run ledger (table ``job_runs``): one row per run of a job, on any replica."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .base import Connection
from .sql import QUERIES


@dataclass(frozen=True)
class LedgerRow:
    job: str
    replica_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    rows: int
    error: str | None
    details: dict[str, Any] | None = None


def start(conn: Connection, job: str, replica_id: str, details: dict[str, Any]) -> int:
    params = {"job": job, "replica_id": replica_id, "details": Jsonb(details)}
    row = conn.execute(QUERIES["ledger_start"], params).fetchone()
    assert row is not None
    return int(row[0])


def finish(
    conn: Connection,
    run_id: int,
    outcome: str,
    *,
    rows: int = 0,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    params = {
        "run_id": run_id,
        "outcome": outcome,
        "rows": rows,
        "error": error,
        "details": Jsonb(details or {}),
    }
    conn.execute(QUERIES["ledger_finish"], params)


def skipped(
    conn: Connection, job: str, replica_id: str, reason: str, details: dict[str, Any]
) -> None:
    params = {"job": job, "replica_id": replica_id, "reason": reason, "details": Jsonb(details)}
    conn.execute(QUERIES["ledger_skipped"], params)


def window_skipped(
    conn: Connection,
    job: str,
    replica_id: str,
    reason: str,
    details: dict[str, Any],
    *,
    slot: str,
    window: str,
    window_opens: str,
) -> None:
    """Slot ``slot`` (ISO 8601) fell outside the job's ``window``, which opens next at
    ``window_opens`` (ISO 8601, UTC): one ``skipped`` row per closed period, whose details
    count its slots (``slots_skipped``, ``last_slot``). Only call while holding the job's lock.
    """
    details = {
        **details,
        "window": window,
        "window_opens": window_opens,
        "slots_skipped": 1,
        "last_slot": slot,
    }
    params = {
        "job": job,
        "replica_id": replica_id,
        "reason": reason,
        "slot": slot,
        "slot_time": datetime.fromisoformat(slot),
        "window": window,
        "window_opens": window_opens,
        "details": Jsonb(details),
    }
    conn.execute(QUERIES["ledger_window_skipped"], params)


def slot_done(conn: Connection, job: str, slot: str) -> bool:
    """``slot``: the ISO 8601 time of the scheduled run (as the ledger's details hold it)."""
    params = {"job": job, "slot": slot, "slot_time": datetime.fromisoformat(slot)}
    row = conn.execute(QUERIES["ledger_slot_done"], params).fetchone()
    return bool(row and row[0])


def sweep_interrupted(conn: Connection, job: str) -> int:
    """Mark runs left 'running' as failures; only call while holding the job's lock."""
    return conn.execute(QUERIES["ledger_sweep_interrupted"], {"job": job}).rowcount


def prune(conn: Connection, job: str, keep_seconds: int) -> int:
    params = {"job": job, "keep_seconds": keep_seconds}
    return conn.execute(QUERIES["ledger_prune"], params).rowcount


def last_runs(conn: Connection, jobs: Sequence[str]) -> dict[str, LedgerRow]:
    rows = conn.execute(QUERIES["ledger_last_runs"], {"jobs": list(jobs)}).fetchall()
    return {row[0]: LedgerRow(*row) for row in rows}
