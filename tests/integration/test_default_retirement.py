"""Revision 0022 retires the DEFAULT partitions of a database in use: rows in them move into
time partitions, bots of release 0.2.0 keep writing while `sessionkeeper migrate` runs, no
write waits on the revision's locks beyond the bound, no row is lost or counted twice, and
0.2.0's daemon statements that name the DEFAULT partitions still run."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from release_support import release_statements
from test_partitions import LOCK_WAIT_BOUND_MS
from test_release_020 import old_begin_turn, old_finish_turn
from upgrade_support import migrate_while_writing

from sessionkeeper.admin import migrate
from sessionkeeper.admin.functions import apply_functions
from sessionkeeper.jobs import usage_rollup

JOBS = release_statements("0.2.0", "jobs_queries.sql")
DAY = timedelta(days=1)
WRITERS = 3
PER_DAY = 50
# The longest a bot may wait on the revision's locks (the job's bound is LOCK_WAIT_BOUND_MS):
# the few attaches made while the DEFAULT partition still exists hold a lock every bot feels
# for their server work; measured 22 to 32 ms on the shared two-core test machine, and up to
# 112 ms when the whole suite ran there beside others (load average 10).
MIGRATION_WAIT_BOUND_MS = 250
_ACQUIRED = re.compile(r"process (\d+) acquired \w+ on .* after ([\d.]+) ms")


def day_start(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.mark.slow
def test_default_partitions_are_retired_while_bots_of_020_write(
    embedded_server_factory: Any,
) -> None:
    # A server of its own that reports every lock wait longer than the bound.
    server = embedded_server_factory()
    server.start()
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET log_lock_waits = on")
        admin.execute(f"ALTER SYSTEM SET deadlock_timeout = '{LOCK_WAIT_BOUND_MS}ms'")
        admin.execute("SELECT pg_reload_conf()")
    url = server.ensure_database("retire")
    migrate.upgrade(url, "0021")  # the revision before the retirement (0022)
    # The functions as `sessionkeeper migrate` left them at 0021 (they are applied at head).
    with psycopg.connect(url) as conn:
        apply_functions(conn)
    now = datetime.now(UTC)
    # Days the DEFAULT partitions hold rows of (no partition_maintenance ran yet): the past,
    # today (the bots write it during the upgrade) and a month ahead.
    days = [day_start(now) + n * DAY for n in (-3, -2, 0, 30)]
    with psycopg.connect(url, autocommit=True) as conn:
        seed = conn.execute(
            "INSERT INTO users (channel, channel_user_id) VALUES ('telegram', 'seed')"
            " RETURNING user_id"
        ).fetchone()
        assert seed is not None
        for day in days:
            conn.execute(
                "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at)"
                " SELECT %s, 'telegram', 1, %s + g * interval '1 minute'"
                " FROM generate_series(1, %s) g",
                (seed[0], day, PER_DAY),
            )
            conn.execute(
                "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
                " VALUES (%s, 86400, %s, 1)",
                (seed[0], day),
            )
        # Counted before the upgrade (by a 0.2.0 daemon): the rollup must not count it again.
        with conn.transaction():
            watermark = conn.execute(JOBS["usage_rollup_lock"]).fetchone()
            assert watermark is not None
            conn.execute(
                JOBS["usage_rollup"], {"watermark": watermark[0], "now": now, "batch_size": 10**6}
            )
        assert conn.execute("SELECT sum(requests) FROM usage_daily").fetchone() == (
            len(days) * PER_DAY,
        )
        defaults = conn.execute(
            "SELECT (SELECT count(*) FROM usage_stats_default),"
            " (SELECT count(*) FROM rate_limits_default)"
        ).fetchone()
        assert defaults == (len(days) * PER_DAY, len(days))

    bots: set[int] = set()

    def turn(conn: psycopg.Connection[Any], user: str) -> None:
        bots.add(conn.info.backend_pid)
        old = conn.cursor(row_factory=dict_row)
        row = old_begin_turn(old, None, caps=[10**9], user=user)
        assert row["allowed"]
        old_finish_turn(old, row, None)

    written = migrate_while_writing(url, turn, [f"bot{n}" for n in range(WRITERS)])
    assert migrate.current_revision(url) == migrate.head_revision()

    with psycopg.connect(url, autocommit=True) as conn:

        def one(query: str, *params: Any) -> Any:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return row[0]

        for table in ("rate_limits", "usage_stats"):
            # No DEFAULT partition; the retired one is an empty plain table without a foreign key.
            assert (
                one(
                    "SELECT count(*) FROM pg_inherits"
                    " WHERE inhparent = %s::regclass AND inhrelid = %s::regclass",
                    table,
                    f"{table}_default",
                )
                == 0
            )
            assert one("SELECT relkind FROM pg_class WHERE relname = %s", f"{table}_default") == "r"
            assert one(f"SELECT count(*) FROM {table}_default") == 0
            assert (
                one(
                    "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                    " AND conrelid = %s::regclass",
                    f"{table}_default",
                )
                == 0
            )
        # Every seeded row in the partition of its day; the bots' rows of today with them.
        placed: dict[str, int] = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM usage_stats"
                " WHERE user_id = %s GROUP BY 1",
                (seed[0],),
            ).fetchall()
        )
        assert placed == {f"usage_stats_p{day:%Y%m%d}_0000": PER_DAY for day in days}
        windows = conn.execute(
            "SELECT tableoid::regclass::text FROM rate_limits WHERE user_id = %s ORDER BY 1",
            (seed[0],),
        ).fetchall()
        assert windows == [(f"rate_limits_p{day:%Y%m%d}_0000",) for day in days]
        # No write lost, none counted twice.
        assert one("SELECT count(*) FROM usage_stats") == len(days) * PER_DAY + sum(written)
        assert one("SELECT sum(request_count) FROM rate_limits WHERE window_seconds = 60") == sum(
            written
        )
        assert usage_rollup.run(conn, usage_rollup.Settings(), now).rows == sum(written)
        assert one("SELECT sum(requests) FROM usage_daily") == len(days) * PER_DAY + sum(written)
        # A week ahead is made: the bots' writes have their partitions without the daemon.
        for n in range(8):
            name = f"usage_stats_p{day_start(now) + n * DAY:%Y%m%d}_0000"
            assert one("SELECT to_regclass(%s) IS NOT NULL", name)
        # 0.2.0 daemons' statements that name the retired tables still run (on no rows).
        params = {"now": now, "grace_seconds": 0, "prune_after_seconds": 0, "batch_size": 100}
        assert conn.execute(JOBS["rate_limit_cleanup"], params).rowcount == 0
        assert conn.execute(JOBS["usage_prune"], params).rowcount == 0

    # The revision's steps that attach under the DEFAULT partition's lock are felt by every
    # bot (docs/partitions.md): no bot waited longer than this one-off bound for any lock.
    log = server.log_file.read_text()
    waited = [float(found[2]) for found in _ACQUIRED.finditer(log) if int(found[1]) in bots]
    assert max(waited, default=0) < MIGRATION_WAIT_BOUND_MS, waited
