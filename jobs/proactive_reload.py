"""proactive_reload: refresh ``proactive_user_list`` and report its size.

The list holds the users the store's ``load_users_from_db`` returns: every authenticated user
of the channel (Telegram; the chat id is the registered one, else the channel user id) and
every authenticated user who registered a chat. It is updated in place, batch by batch (only
changed rows are written), so a reader always sees a complete list. No store call reads it
yet: bots call ``load_users_from_db``, which reads the users tables themselves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from .base import (
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    delete_batches,
    job_params,
    uninterrupted,
)
from .sql import QUERIES


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Channel whose authenticated users are proactive without registering a chat.
    channel: str = "telegram"


def run(
    conn: Connection, settings: Settings, now: datetime, pause: Pause = uninterrupted
) -> JobResult:
    params = job_params(settings, now)
    after = uuid.UUID(int=0)
    written = 0
    stopped = False
    while True:
        with conn.transaction():
            row = conn.execute(QUERIES["proactive_upsert"], {**params, "after": after}).fetchone()
        assert row is not None
        seen, last_user_id, batch_written = row
        written += batch_written
        if seen < settings.batch_size:
            break
        after = last_user_id
        if pause(settings.pause_seconds):
            stopped = True
            break
    removed = 0
    if not stopped:
        removed, stopped = delete_batches(conn, "proactive_remove_stale", params, settings, pause)
    size_row = conn.execute(QUERIES["proactive_list_size"]).fetchone()
    size = int(size_row[0]) if size_row else 0
    return JobResult(size, {"size": size, "written": written, "removed": removed}, stopped)
