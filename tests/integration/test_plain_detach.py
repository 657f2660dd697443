"""The plain DETACH (issue 24), the jobs' path where ``DETACH ... CONCURRENTLY`` is missing
(PostgreSQL 13) or refused (a DEFAULT partition, Citus), run on a server of the tests' own
with PostgreSQL 13's version passed in (partitions.detach_concurrently): it detaches and
drops, keeps every other row, and under concurrent writers does what docs/partitions.md says
of it: it holds the table in ACCESS EXCLUSIVE mode for the detach alone, and a write queued
behind its request waits at most lock_timeout_ms."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from conftest import create_database, drop_database, with_dbname
from partition_support import bots_writing, reporting_lock_waits
from test_partitions import DAY, NOW, make_user, names, track, waits_on

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.jobs import partition_maintenance, partitions

Conn = psycopg.Connection[tuple[Any, ...]]

# What PostgreSQL 13 reports: DETACH ... CONCURRENTLY came with 14.
PG13 = 130016
# log_lock_waits reports every wait longer than this (deadlock_timeout): a bot may wait for the
# plain detach's hold (milliseconds of server work) plus the job's queued request (at most
# lock_timeout_ms, 5 by default); 100 ms leaves room for a shared, loaded machine.
WAIT_BOUND_MS = 100


@pytest.fixture(scope="module")
def server(embedded_server_factory: type[EmbeddedPostgres]) -> tuple[EmbeddedPostgres, str]:
    """A server of its own reporting lock waits, and a database migrated to head on it."""
    server = embedded_server_factory()
    server.start()
    reporting_lock_waits(server, WAIT_BOUND_MS)
    admin = server.url("postgres")
    template = create_database(admin, "sk_plain_template")
    migrate.upgrade(with_dbname(admin, template))
    return server, template


@pytest.fixture
def url(server: tuple[EmbeddedPostgres, str]) -> Iterator[str]:
    server_, template = server
    admin = server_.url("postgres")
    name = create_database(admin, "sk_plain", template=template)
    yield with_dbname(admin, name)
    drop_database(admin, name)


@pytest.fixture
def conn(url: str) -> Iterator[Conn]:
    with psycopg.connect(url, autocommit=True) as connection:
        # The server's own choice must be the other path: DETACH ... CONCURRENTLY.
        assert partitions.detach_concurrently(
            connection.info.server_version, has_default=False, citus=False
        )
        yield connection


def usage_by_day(conn: Conn) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM usage_stats GROUP BY 1"
    ).fetchall()
    return {name: int(count) for name, count in rows}


def test_the_plain_detach_drops_what_ended_and_keeps_every_other_row(conn: Conn) -> None:
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=3), NOW)
    user = make_user(conn)
    for day in range(4):  # March 10th to 13th: 1, 2, 3 and 4 rows
        for _ in range(day + 1):
            track(conn, user, NOW + day * DAY)
    day_start = partitions.slot_start(NOW, DAY)
    settings = partitions.DdlSettings(lock_timeout_ms=100)
    dropped = partitions.drop_expired(
        conn, "usage_stats", day_start + 2 * DAY, settings, server_version=PG13
    )
    assert dropped == (2, 3, 0)
    assert usage_by_day(conn) == {"usage_stats_p20260312_0000": 3, "usage_stats_p20260313_0000": 4}
    assert conn.execute("SELECT to_regclass('usage_stats_p20260310_0000')").fetchone() == (None,)
    assert not any(p.detach_pending for p in partitions.list_partitions(conn))

    # Kept after the detach (keep_if asked again once no row can arrive): attached again, whole.
    answers = iter([False, True])
    kept = partitions.drop_expired(
        conn,
        "usage_stats",
        day_start + 3 * DAY,
        settings,
        keep_if=lambda _conn, _name: next(answers),
        server_version=PG13,
    )
    assert kept == (0, 0, 1)
    assert usage_by_day(conn)["usage_stats_p20260312_0000"] == 3
    assert "usage_stats_p20260312_0000" in names(conn, "usage_stats")


def test_an_open_transaction_defers_the_plain_detach_where_the_concurrent_one_is_left_pending(
    conn: Conn, url: str
) -> None:
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=2), NOW)
    user = make_user(conn)
    track(conn, user, NOW)
    settings = partitions.DdlSettings(lock_timeout_ms=20, lock_attempts=2)
    ended = partitions.slot_start(NOW, DAY) + DAY
    with psycopg.connect(url) as bot:
        # A transaction that has used the table (and every partition), still open.
        bot.execute("SELECT count(*) FROM usage_stats")
        # The plain DETACH needs ACCESS EXCLUSIVE: refused within its lock timeout, twice,
        # and nothing is left half-done.
        plain = partitions.drop_expired(conn, "usage_stats", ended, settings, server_version=PG13)
        assert plain == (0, 0, 1)
        assert not any(p.detach_pending for p in partitions.list_partitions(conn))
        assert usage_by_day(conn) == {"usage_stats_p20260310_0000": 1}
        # The server's own choice (14 and later: CONCURRENTLY) gets past the table's lock and
        # is left pending, waiting for the bot: the two paths really differ.
        concurrent = partitions.drop_expired(conn, "usage_stats", ended, settings)
        assert concurrent == (0, 0, 1)
        assert [p.name for p in partitions.list_partitions(conn) if p.detach_pending] == [
            "usage_stats_p20260310_0000"
        ]
        bot.commit()
    # Finished by the next run (FINALIZE, whatever the version says: a pending detach is one).
    assert partitions.drop_expired(conn, "usage_stats", ended, settings, server_version=PG13) == (
        1,
        1,
        0,
    )


def test_a_write_queued_behind_the_plain_detach_waits_at_most_its_lock_timeout(
    conn: Conn, url: str
) -> None:
    partition_maintenance.run(conn, partition_maintenance.Settings(ahead=2), NOW)
    user = make_user(conn)
    # A lock timeout long enough to watch (capped at half of deadlock_timeout: raised here).
    conn.execute("SET deadlock_timeout = '10s'")
    settings = partitions.DdlSettings(lock_timeout_ms=3000, lock_attempts=1)
    ended = partitions.slot_start(NOW, DAY) + DAY
    job_pid = conn.info.backend_pid
    result: list[tuple[int, int, int]] = []
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as writer:
        track(holder, user, NOW + DAY)  # an open transaction: the job's request must queue
        job = threading.Thread(
            target=lambda: result.append(
                partitions.drop_expired(conn, "usage_stats", ended, settings, server_version=PG13)
            )
        )
        job.start()
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", [job_pid]
            ).fetchone():
                assert time.monotonic() < deadline and job.is_alive(), "the job never queued"
        # Behind the job's queued request: without its lock timeout this write would wait for
        # the holder, which ends only after it (statement_timeout would end it first).
        writer.execute("SET statement_timeout = '20s'")
        started = time.monotonic()
        track(writer, user, NOW + DAY)
        waited = time.monotonic() - started
        job.join(30)
        holder.commit()
    assert result == [(0, 0, 1)]
    # It queued (the job's request was ahead), and for no longer than the job's 3 s (with a
    # loaded machine's delay): the holder was still open when it got through.
    assert 0.5 < waited < 10, waited
    assert usage_by_day(conn) == {"usage_stats_p20260311_0000": 2}


@pytest.mark.slow
def test_bots_wait_on_the_plain_detach_no_longer_than_the_bound(
    server: tuple[EmbeddedPostgres, str], url: str
) -> None:
    real_now = datetime.now(UTC)
    settings = partition_maintenance.Settings(ahead=7)
    log_start = server[0].log_file.stat().st_size
    with psycopg.connect(url, autocommit=True) as conn:
        job_pid = conn.info.backend_pid
        # A past week of partitions, and the days around now the bots write to.
        partition_maintenance.run(conn, settings, real_now - 8 * DAY)
        partition_maintenance.run(conn, settings, real_now)
        dropped = 0
        with bots_writing(url, "plain-bot"):
            for step in range(1, 8):
                # A day on: the oldest partitions of both tables dropped the plain way.
                before = partitions.slot_start(real_now - (7 - step) * DAY, DAY)
                for table in partitions.KEYS:
                    made, _rows, _deferred = partitions.drop_expired(
                        conn, table, before, settings, server_version=PG13
                    )
                    dropped += made
    assert dropped >= 14
    log = server[0].log_file.read_text()[log_start:]
    assert waits_on(log, job_pid) == []
