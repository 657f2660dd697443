"""The test calendar: time partitions for the fixed dates the tests write with.

A deployment's bots write rows of now, and partition_maintenance keeps partitions made ahead
of it (revision 0022 made the days around the migration). The tests pass fixed moments
(``T0``, ``NOW``: dates from 2024 to 2026) instead, and no DEFAULT partition takes their rows any
more: the template database gets one wide partition per table covering those dates, as a
deployment whose maintenance ran then would have. Tests about partitions themselves remove it
first (``drop_calendar``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.jobs import partitions
from store import Store

CALENDAR_START = datetime(2020, 1, 1, tzinfo=UTC)
CALENDAR_END = datetime(2026, 12, 1, tzinfo=UTC)


def calendar_name(table: str) -> str:
    return partitions.partition_name(table, CALENDAR_START)


def make_calendar(url: str) -> None:
    """One partition per table from CALENDAR_START up to CALENDAR_END, or to the first partition
    the migration made (the days around the real date)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in partitions.KEYS:
            later = [
                p.lower
                for p in partitions.list_partitions(conn, (table,))
                if p.lower is not None and p.lower >= CALENDAR_START
            ]
            upper = min([CALENDAR_END, *later])
            settings = partitions.DdlSettings(lock_timeout_ms=1000)
            assert partitions.create(conn, table, CALENDAR_START, upper, settings)


def drop_calendar(conn: psycopg.Connection[Any]) -> None:
    """Remove the calendar partitions (and their rows): for tests of partitions themselves."""
    for table in partitions.KEYS:
        conn.execute(f"DROP TABLE IF EXISTS {calendar_name(table)}")


def reporting_lock_waits(server: EmbeddedPostgres, bound_ms: int) -> None:
    """Make ``server`` (started) log every lock wait longer than ``bound_ms``."""
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET log_lock_waits = on")
        admin.execute(f"ALTER SYSTEM SET deadlock_timeout = '{bound_ms}ms'")
        admin.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def bots_writing(url: str, prefix: str, count: int = 3) -> Iterator[None]:
    """``count`` bots taking turns (each writes a message and its usage) until the block ends;
    then every bot must have gone on without an error, and some turns must have been taken."""
    stop = threading.Event()
    errors: list[BaseException] = []
    turns = [0]

    def bot(number: int) -> None:
        with Store(url, max_size=1, rate_per_minute=None) as store:
            while not stop.is_set():
                try:
                    turn = store.begin_turn("telegram", f"{prefix}{number}")
                    store.finish_turn(turn, "q", "a", input_tokens=1, output_tokens=1)
                    turns[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    bots = [threading.Thread(target=bot, args=(n,)) for n in range(count)]
    for thread in bots:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in bots:
            thread.join(60)
    assert errors == [] and turns[0] > 0
