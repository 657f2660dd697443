"""session_archival: move idle sessions and their messages to the archive tables.

A batch copies the sessions (locked), moves their messages in order, then deletes the online
rows, all in one transaction: a session is either fully online or fully archived. ``restore``
brings one back. Archives older than ``purge_after_seconds`` are deleted when that is set.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from store.config import StoreConfig
from store.errors import NotFound

from .base import (
    STORE_DEFAULTS,
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    job_params,
    main_then_retention,
    uninterrupted,
)
from .sql import QUERIES


@dataclass(frozen=True)
class Settings(BatchSettings):
    batch_size: int = 500
    # A session not active for this long is archived.
    idle_seconds: int = 30 * 86400
    # Archives older than this are deleted; 0 keeps them forever.
    purge_after_seconds: int = 0


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    messages = 0

    def move(c: Connection) -> int:
        nonlocal messages
        ids = [row[0] for row in c.execute(QUERIES["archive_sessions"], params)]
        if ids:
            moved = c.execute(QUERIES["archive_session_messages"], {"session_ids": ids})
            messages += moved.rowcount
            c.execute(QUERIES["archive_delete_sessions"], {"session_ids": ids})
        return len(ids)

    purge = "purge_archived_sessions" if settings.purge_after_seconds > 0 else None
    done = main_then_retention(conn, move, purge, params, settings, pause)
    details = {"archived": done.main, "messages": messages, "purged": done.retention}
    return JobResult(done.main + done.retention, details, done.stopped)


def restore(conn: Connection, session_id: uuid.UUID, now: datetime) -> int:
    """Move one archived session back online; returns the number of messages restored."""
    params = {"session_id": session_id, "now": now}
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
