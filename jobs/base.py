"""What every job shares: its result, the stop check, and the batching loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from .sql import QUERIES

# Jobs take an autocommit connection: each ``conn.transaction()`` is then a real transaction.
Connection = psycopg.Connection[Any]
StopCheck = Callable[[], bool]


def never() -> bool:
    return False


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
    conn: Connection, step: Callable[[Connection], int], batch_size: int, should_stop: StopCheck
) -> tuple[int, bool]:
    """Run ``step`` in one short transaction per batch until a batch comes back short.

    Returns the rows handled and whether the loop stopped early on ``should_stop``, which is
    checked between batches (a stop request never interrupts a batch half-way).
    """
    total = 0
    while True:
        with conn.transaction():
            handled = step(conn)
        total += handled
        if handled < batch_size:
            return total, False
        if should_stop():
            return total, True


def delete_batches(
    conn: Connection,
    query: str,
    params: Mapping[str, Any],
    batch_size: int,
    should_stop: StopCheck,
) -> tuple[int, bool]:
    """``batches`` for a single statement whose row count is the batch's size."""
    statement = QUERIES[query]
    return batches(conn, lambda c: c.execute(statement, params).rowcount, batch_size, should_stop)
