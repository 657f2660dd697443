"""user_retention: forget users who have not been active for ``inactive_seconds``.

Off by default (``enabled = false``): forgetting is not undone. When enabled, each run walks
the users in ``user_id`` order, ``batch_size`` at a time, one transaction per batch. A user is
inactive when its row has not changed (``users.updated_at``: creation, first message of a
channel user, a new display name, linking) and none of its sessions, online or archived, was
active since the cutoff. Each inactive user is erased exactly as ``store.forget_user`` does,
by the same ``sk_forget`` (usage kept only as anonymous totals; a person goes with its last
user). The batch locks the users it found inactive, so a message arriving meanwhile waits
for the erasure and then starts a new user. A user another subsystem's table still references
is left alone and counted as ``blocked`` (``ErasureBlocked``). A user whose erasure would
have to wait for a link redemption or unlink in progress on its person is left for the next
run and counted as ``busy``: the batch already holds the users' rows, which such a call may
wait for in turn, so waiting for it could deadlock. With ``dry_run`` the run only counts whom
it would forget (``details.would_forget``) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from store.config import StoreConfig

from .base import (
    STORE_DEFAULTS,
    BatchSettings,
    Connection,
    JobResult,
    Pause,
    batches,
    job_params,
    uninterrupted,
)
from .sql import QUERIES

DAY = 86400


@dataclass(frozen=True)
class Settings(BatchSettings):
    # Users examined per batch transaction (each inactive one is erased in it).
    batch_size: int = 500
    # No activity for this long (default 365 days): the user is forgotten.
    inactive_seconds: int = 365 * DAY
    # Count whom the run would forget, forget nobody.
    dry_run: bool = False


def run(
    conn: Connection,
    settings: Settings,
    now: datetime,
    pause: Pause = uninterrupted,
    store: StoreConfig = STORE_DEFAULTS,
) -> JobResult:
    params: dict[str, Any] = {**job_params(settings, now, store), "after": UUID(int=0)}
    counts = {"scanned": 0, "inactive": 0, "forgotten": 0, "blocked": 0, "busy": 0, "persons": 0}

    def batch(c: Connection) -> int:
        row = c.execute(QUERIES["user_retention_batch"], params).fetchone()
        scanned, last_user_id, inactive = row if row else (0, None, None)
        if last_user_id is not None:
            params["after"] = last_user_id
        counts["scanned"] += scanned
        counts["inactive"] += len(inactive or [])
        if not settings.dry_run:
            c.execute(QUERIES["user_retention_lock_timeout"])
            for user_id in inactive or []:
                _forget(c, user_id, counts)
        return int(scanned)

    _, stopped = batches(conn, batch, settings, pause)
    if settings.dry_run:
        details = {
            "dry_run": True,
            "scanned": counts["scanned"],
            "would_forget": counts["inactive"],
        }
        return JobResult(0, details, stopped)
    details = {k: v for k, v in counts.items() if k != "inactive"}
    return JobResult(counts["forgotten"], details, stopped)


def _forget(conn: Connection, user_id: UUID, counts: dict[str, int]) -> None:
    try:
        with conn.transaction():  # a savepoint: a busy user's erasure is undone, not the batch
            done = {
                (table, action): n
                for table, action, n in conn.execute(
                    QUERIES["user_retention_forget"], {"user_id": user_id}
                )
            }
    except psycopg.errors.LockNotAvailable:
        counts["busy"] += 1
        return
    if any(table == "blocked" for table, _ in done):
        counts["blocked"] += 1
    elif done:  # nothing: the user was forgotten meanwhile
        counts["forgotten"] += 1
        counts["persons"] += done.get(("persons", "deleted"), 0)
