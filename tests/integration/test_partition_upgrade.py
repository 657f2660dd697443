"""Revision 0013 converts a database in use: rows present, bots of release 0.1.0 writing while
`sessionkeeper migrate` runs; no write is refused, no row lost, none counted twice."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from upgrade_support import OLD, migrate_while_writing

from sessionkeeper.admin import migrate
from sessionkeeper.jobs import usage_rollup

SEEDED = 2000
WRITERS = 3


@pytest.mark.slow
def test_tables_in_use_are_partitioned_online(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, "0012")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (channel, channel_user_id) SELECT 'telegram', 'w' || g"
            " FROM generate_series(1, %s) g",
            (WRITERS,),
        )
        users = [row[0] for row in conn.execute("SELECT user_id FROM users ORDER BY 1")]
        # Usage from before the upgrade: half counted already by the flag, half not.
        conn.execute(
            "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at, rolled_up)"
            " SELECT %s, 'telegram', 1, now() - g * interval '1 minute', g %% 2 = 0"
            " FROM generate_series(1, %s) g",
            (users[0], SEEDED),
        )
        conn.execute(
            "INSERT INTO usage_daily (day, user_id, channel, requests, input_tokens)"
            " VALUES (current_date, %s, 'telegram', %s, %s)",
            (users[0], SEEDED // 2, SEEDED // 2),
        )

    def turn(conn: psycopg.Connection[Any], user: uuid.UUID) -> None:
        # Release 0.1.0's statements, one autocommit statement each, as its store sends them.
        allowed = conn.execute(
            OLD["check_rate_limit"],
            {
                "user_id": user,
                "now": None,
                "windows": [60, 3600],
                "caps": [10**9, 10**9],
                "durable": False,
            },
        ).fetchone()
        assert allowed is not None and allowed[0]
        conn.execute(
            OLD["track_usage"],
            {
                "user_id": user,
                "channel": "telegram",
                "input_tokens": 1,
                "output_tokens": 0,
                "cached_tokens": 0,
                "now": None,
            },
        )

    written = migrate_while_writing(url, turn, users)
    assert migrate.current_revision(url) == migrate.head_revision()

    with psycopg.connect(url, autocommit=True) as conn:

        def one(query: str) -> Any:
            row = conn.execute(query).fetchone()
            assert row is not None
            return row[0]

        assert one("SELECT relkind FROM pg_class WHERE relname = 'usage_stats'") == "p"
        assert one("SELECT count(*) FROM usage_stats_legacy") >= SEEDED
        # No write lost: every request counted in its windows, every usage row present.
        assert one("SELECT count(*) FROM usage_stats") == SEEDED + sum(written)
        requests = "SELECT sum(request_count) FROM rate_limits WHERE window_seconds = 60"
        assert one(requests) == sum(written)
        # None counted twice: the rollup adds exactly the rows not counted before.
        usage_rollup.run(conn, usage_rollup.Settings(), usage_now(conn))
        assert one("SELECT sum(requests) FROM usage_daily") == SEEDED + sum(written)
        assert one("SELECT sum(input_tokens) FROM usage_daily") == SEEDED + sum(written)


def usage_now(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]
