"""proactive_reload: refresh ``proactive_user_list`` and report its size.

The list holds the users the store's ``load_users_from_db`` returns: every authenticated user
of the store's ``proactive_channel`` (the chat id is the registered one, else the channel user
id) and every authenticated user who registered a chat. It is updated in place, page by page
(only changed rows are written), then stale entries go, so a reader always sees a complete
list. Then it publishes the list (``sk_publish_proactive_list``): when a row was written or
removed, the list's version goes up and a NOTIFY carrying it tells every bot holding the list
in memory (``store.ProactiveUsers``) to reload.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from store.config import StoreConfig

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
    """The batch settings only: the channel is the store's ``proactive_channel``."""


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params = job_params(settings, now, store)
    after = uuid.UUID(int=0)
    written = 0

    def upsert_page(c: Connection) -> int:
        nonlocal after, written
        row = c.execute(QUERIES["proactive_upsert"], {**params, "after": after}).fetchone()
        assert row is not None
        seen, last_user_id, page_written = row
        written += page_written
        after = last_user_id
        return int(seen)

    done = main_then_retention(conn, upsert_page, "proactive_remove_stale", params, settings, pause)
    size_row = conn.execute(QUERIES["proactive_list_size"]).fetchone()
    size = int(size_row[0]) if size_row else 0
    details = {"size": size, "written": written, "removed": done.retention}
    if not done.stopped:
        # A stopped run leaves the list half-refreshed: the next run publishes it.
        changed = bool(written or done.retention)
        version_row = conn.execute(QUERIES["proactive_publish"], {"changed": changed}).fetchone()
        details["version"] = int(version_row[0]) if version_row else 0
    return JobResult(size, details, done.stopped)
