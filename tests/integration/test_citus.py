"""``sessionkeeper citus-ddl``: what can be checked without Citus (it cannot be installed here).

The command's output parses as PostgreSQL (pglast, PostgreSQL's own parser), places every table
of the schema, and its key changes (everything but the Citus calls) run on a real database at
head holding a conversation, leaving every key of a distributed table with the distribution
column and the data intact. Whether the hot path routes is tests/unit/test_citus_routing.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pglast
import psycopg
import sqlalchemy as sa
from pglast import ast

from sessionkeeper.admin import citus
from store import Store, schema

COLUMN = citus.DISTRIBUTION_COLUMN


def citus_ddl() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sessionkeeper", "citus-ddl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def placement_calls(ddl: str) -> dict[str, list[str]]:
    """``{function: [first argument, ...]}`` of the SELECT create_*_table(...) calls."""
    calls: dict[str, list[str]] = {}
    for raw in pglast.parse_sql(ddl):
        stmt: Any = raw.stmt
        targets: Any = stmt.targetList if isinstance(stmt, ast.SelectStmt) else None
        call: Any = targets[0].val if targets else None
        if isinstance(call, ast.FuncCall):
            args: Any = call.args
            funcname: Any = call.funcname
            calls.setdefault(funcname[-1].sval, []).append(args[0].val.sval)
    return calls


def test_the_ddl_parses_and_places_every_table_of_the_schema() -> None:
    ddl = citus_ddl()
    calls = placement_calls(ddl)  # raises on any syntax error
    plan = {p.table: p.kind for p in citus.placements()}
    assert set(plan) == set(schema.metadata.tables)
    assert calls["create_reference_table"] == [t for t, k in plan.items() if k == "reference"]
    distributed = calls["create_distributed_table"]
    assert sorted(distributed) == sorted(t for t, k in plan.items() if k == "distributed")
    assert distributed[0] == citus.COLOCATION_ROOT, "the co-location root goes first"
    assert plan["job_runs"] == "coordinator" and "job_runs" not in distributed


def test_the_key_changes_run_on_a_database_at_head_and_keep_the_data(database_url: str) -> None:
    with Store(database_url) as store:
        turn = store.begin_turn("telegram", "42")
        store.finish_turn(turn, "hello", "hi", input_tokens=3)
        store.create_link_code(turn.user.user_id)
    ddl = citus_ddl()
    key_changes = ddl[: ddl.index("COMMIT;") + len("COMMIT;")]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(key_changes)
        keys = conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, c.contype,
                   array_agg(a.attname::text ORDER BY a.attname)
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
            WHERE c.contype IN ('p', 'u', 'f') AND c.connamespace = 'public'::regnamespace
            GROUP BY 1, 2, 3
            """
        ).fetchall()
        unique_indexes = conn.execute(
            """
            SELECT i.indrelid::regclass::text, array_agg(a.attname::text)
            FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
            WHERE i.indisunique GROUP BY i.indexrelid, 1
            """
        ).fetchall()
        messages = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE m.user_id = s.user_id)"
            " FROM session_messages m JOIN sessions s USING (session_id)"
        ).fetchone()
        assert messages == (2, 2), "every message carries its session's user"
        distributed = {p.table for p in citus.placements() if p.kind == "distributed"}
        for table, name, kind, columns in keys:
            if table in distributed and kind in ("p", "u"):
                assert COLUMN in columns, (table, name, columns)
        for table, columns in unique_indexes:
            if table in distributed:
                assert COLUMN in columns, (table, columns)
        foreign = {name: (table, columns) for table, name, kind, columns in keys if kind == "f"}
        assert COLUMN in foreign["fk_session_messages_session_id_sessions"][1]
        # The cascades still hold: erasing the user takes its sessions and messages along.
        conn.execute("DELETE FROM users WHERE user_id = %s", (turn.user.user_id,))
        assert conn.execute("SELECT count(*) FROM session_messages").fetchone() == (0,)


# UUID columns that hold no user id (anything else must be re-keyed by step 0).
NOT_USER_IDS = {"session_id", "person_id", "turn_id", "stat_id"}


def test_every_column_holding_a_user_id_is_re_keyed() -> None:
    rekeyed = set(citus.user_id_columns())
    for table in schema.metadata.sorted_tables:
        for column in table.c:
            if isinstance(column.type, sa.UUID) and column.name not in NOT_USER_IDS:
                assert (table.name, column.name) in rekeyed, (table.name, column.name)
    assert ("link_codes", "used_by") in rekeyed and ("session_messages", "user_id") in rekeyed


def test_users_whose_id_is_not_their_key_are_re_keyed_everywhere(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A user as releases before revision 0014 made it: a random id.
        legacy = conn.execute(
            "INSERT INTO users (user_id, channel, channel_user_id, authenticated)"
            " VALUES (gen_random_uuid(), 'telegram', 'old', true) RETURNING user_id"
        ).fetchone()[0]  # type: ignore[index]
    with Store(database_url) as store:
        old = store.begin_turn("telegram", "old")
        assert old.user.user_id == legacy, "a user from before keyed ids keeps its id"
        store.finish_turn(old, "hello", "hi", input_tokens=3)
        code = store.create_link_code(old.user.user_id)
        new = store.begin_turn("telegram", "new")
        store.finish_turn(new, "hey", "ho")
        store.redeem_link_code(new.user.user_id, code.code)
    ddl = citus_ddl()
    with psycopg.connect(database_url, autocommit=True) as conn:
        key = conn.execute("SELECT sk_user_key('telegram', 'old')").fetchone()[0]  # type: ignore[index]
        assert key != legacy
        conn.execute(ddl[: ddl.index("COMMIT;") + len("COMMIT;")])
        assert conn.execute("SELECT old_user_id, new_user_id FROM user_id_rekeys").fetchall() == [
            (legacy, key)
        ], "only the legacy user moved, and the mapping says where"
        assert conn.execute(
            "SELECT count(*) FROM users WHERE user_id <> sk_user_key(channel, channel_user_id)"
        ).fetchone() == (0,)
        for table, column in citus.user_id_columns():
            # Names from the schema, not input.
            left = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", (legacy,))
            assert left.fetchone() == (0,), f"{table}.{column} still holds the old id"
        moved = conn.execute(
            "SELECT (SELECT count(*) FROM sessions WHERE user_id = %(k)s),"
            " (SELECT count(*) FROM session_messages WHERE user_id = %(k)s),"
            " (SELECT count(*) FROM usage_stats WHERE user_id = %(k)s),"
            " (SELECT count(*) FROM link_codes WHERE user_id = %(k)s)",
            {"k": key},
        ).fetchone()
        assert moved == (1, 2, 1, 1)
        nullable = conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE column_name = 'user_id'"
            " AND table_name IN ('session_messages', 'turn_receipts') AND is_nullable = 'YES'"
        ).fetchall()
        assert nullable == [], "the expanded columns are NOT NULL on Citus"
    # The store still finds the user, now by its key, with its history.
    with Store(database_url) as store:
        again = store.begin_turn("telegram", "old")
        assert again.user.user_id == key
        assert [m.content for m in again.history] == ["hello", "hi"]
