"""One PostgreSQL advisory lock per job, so that only one replica runs a job at a time."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import psycopg

from .base import Connection
from .sql import QUERIES

# First key of the two-key advisory lock form ("skjb"); the second is derived from the job name.
NAMESPACE = 0x736B6A62


def job_key(name: str) -> int:
    """A stable signed 32-bit key for ``name`` (the same in every replica and version)."""
    return zlib.crc32(name.encode()) - 2**31


@contextlib.contextmanager
def job_lock(conn: Connection, name: str) -> Iterator[bool]:
    """Try the job's lock on ``conn`` without waiting; yields whether it was taken.

    The lock is session-scoped: it spans the run's many batch transactions and the server
    drops it when the connection ends, so a killed replica (or a restarted server) never
    leaves it held.
    """
    params = {"namespace": NAMESPACE, "key": job_key(name)}
    row = conn.execute(QUERIES["lock_job"], params).fetchone()
    taken = bool(row and row[0])
    try:
        yield taken
    finally:
        if taken and not conn.closed:
            # A broken connection has lost the lock with its session already.
            with contextlib.suppress(psycopg.Error):
                conn.execute(QUERIES["unlock_job"], params)
