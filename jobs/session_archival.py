"""session_archival: move idle sessions and their messages to the archive tables.

A batch copies the sessions (locked), moves their messages in order, then deletes the online
rows, all in one transaction: a session is either fully online or fully archived. ``restore``
brings one back (keeping its last activity unless asked to make it current). Archives older
than ``purge_after_seconds`` are deleted when that is set.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from store.config import StoreConfig
from store.errors import NotFound
from store.settings import require

from .base import (
    STORE_DEFAULTS,
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    committed,
    delete_batches,
    job_params,
    uninterrupted,
)
from .sql import QUERIES


@dataclass(frozen=True)
class Settings(BatchSettings):
    # The largest batch (sessions); the batch actually run adapts to batch_seconds.
    batch_size: int = 500
    # A session not active for this long is archived.
    idle_seconds: int = 30 * 86400
    # Archives older than this are deleted; 0 keeps them forever.
    purge_after_seconds: int = 0
    # Pacing (docs/partitions.md, "Archival that yields"): each batch aims at this many seconds
    # of work (the next batch's size follows the last one's measured rate, at most doubling),
    # and after each batch the job pauses pause_ratio times as long as the batch took (at
    # least pause_seconds): the bots get the database back in proportion to what the job took,
    # whatever slows it (locks, I/O, CPU).
    batch_seconds: float = 0.5
    pause_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_seconds > 0, "batch_seconds", self.batch_seconds, "a number above 0")


def next_batch_size(size: int, handled: int, elapsed: float, settings: Settings) -> int:
    """The size of the batch after one of ``size`` that handled ``handled`` sessions in
    ``elapsed`` seconds: what the measured rate does in ``batch_seconds``, between 1 and
    ``batch_size``, and at most twice the last one (a fast batch is no promise)."""
    rate = handled / max(elapsed, 1e-3)
    wanted = int(rate * settings.batch_seconds)
    return max(1, min(settings.batch_size, 2 * size, wanted))


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    messages = 0
    size = settings.batch_size
    archived = 0
    stopped = False
    while True:
        started = time.monotonic()
        with conn.transaction():
            chosen = conn.execute(QUERIES["archive_sessions"], {**params, "batch_size": size})
            ids = [row[0] for row in chosen]
            if ids:
                moved = conn.execute(QUERIES["archive_session_messages"], {"session_ids": ids})
                messages += moved.rowcount
                conn.execute(QUERIES["archive_delete_sessions"], {"session_ids": ids})
        committed(len(ids))
        elapsed = time.monotonic() - started
        archived += len(ids)
        if len(ids) < size:
            break
        size = next_batch_size(size, len(ids), elapsed, settings)
        if pause(max(settings.pause_seconds, settings.pause_ratio * elapsed)):
            stopped = True
            break
    purged = 0
    if settings.purge_after_seconds > 0 and not stopped:
        purged, stopped = delete_batches(conn, "purge_archived_sessions", params, settings, pause)
    details = {"archived": archived, "messages": messages, "purged": purged}
    return JobResult(archived + purged, details, stopped)


def backlog(conn: Connection, settings: Settings, now: datetime) -> int:
    """The sessions a run would archive now (the purge pass is not counted)."""
    params = {"now": now, "idle_seconds": settings.idle_seconds}
    row = conn.execute(QUERIES["archivable_sessions"], params).fetchone()
    return int(row[0]) if row else 0


def restore(
    conn: Connection, session_id: uuid.UUID, now: datetime, *, make_current: bool = False
) -> int:
    """Move one archived session back online; returns the number of messages restored.

    The session keeps its ``last_active``: the user's current session stays the one it is
    (``begin_turn`` continues the most recently active one). ``make_current=True`` sets
    ``last_active`` to ``now`` instead, so that the user's next turn continues the restored
    conversation. Either way archival leaves it online for ``idle_seconds`` from ``now``.
    """
    params = {"session_id": session_id, "now": now, "make_current": make_current}
    try:
        with conn.transaction():
            if conn.execute(QUERIES["restore_session"], params).fetchone() is None:
                raise NotFound(f"no archived session {session_id}")
            restored = conn.execute(QUERIES["restore_session_messages"], params).rowcount
            conn.execute(QUERIES["restore_delete_archive"], params)
    except psycopg.errors.ForeignKeyViolation:
        raise NotFound(f"the user of archived session {session_id} no longer exists") from None
    except psycopg.errors.UniqueViolation:
        raise NotFound(f"session {session_id} is already online") from None
    return restored
