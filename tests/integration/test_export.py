"""Access export: one JSON document of everything about a user or a person, streamed."""

from __future__ import annotations

import asyncio
import io
import json
import tracemalloc
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import pq
from psycopg.rows import dict_row
from store_support import T0, insert_users, store_fixture  # noqa: F401 (fixture)

from store import AsyncStore, InvalidInput, NotFound, Store, core, export
from store.config import StoreConfig


def export_json(store: Store, *, user: Any = None, person: Any = None) -> dict[str, Any]:
    out = io.StringIO()
    if user is not None:
        store.export_user(user, out)
    else:
        store.export_person(person, out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def busy_user(store: Store, conn: psycopg.Connection[Any], name: str) -> Any:
    """A user with something in every table an export covers."""
    turn = store.begin_turn("telegram", name, display_name=name.title(), now=T0)
    store.finish_turn(turn, f"hello from {name}", "hi", input_tokens=7, now=T0)
    old = store.begin_turn("telegram", name, now=T0 + timedelta(days=1))
    store.finish_turn(old, "later", "sure", now=T0 + timedelta(days=1))
    user = turn.user.user_id
    conn.execute(
        "WITH s AS (INSERT INTO archived_sessions (session_id, user_id, created_at, last_active,"
        " next_seq) VALUES (gen_random_uuid(), %(u)s, %(t)s, %(t)s, 1) RETURNING session_id)"
        " INSERT INTO archived_session_messages (session_id, seq, role, content, created_at)"
        " SELECT session_id, 0, 'user', 'archived words', %(t)s FROM s",
        {"u": user, "t": T0 - timedelta(days=60)},
    )
    conn.execute(
        "INSERT INTO legacy_quarantined_messages (session_id, array_index, user_id, reason,"
        " message) VALUES (gen_random_uuid(), 3, %s, 'unknown role', '{\"role\": \"bot\"}')",
        (user,),
    )
    conn.execute(
        "INSERT INTO link_code_failures (user_id, window_start, failures) VALUES (%s, %s, 2)",
        (user, T0),
    )
    conn.execute("INSERT INTO proactive_user_list (user_id, chat_id) VALUES (%s, 'c1')", (user,))
    store.register_proactive_user("c1", user, now=T0)
    conn.execute(
        "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id, channel, user_id,"
        " state) SELECT 1, 1, count(*) + 1, 'telegram', %s, 'Form:name' FROM aiogram_fsm_states",
        (user,),
    )
    conn.execute(
        "INSERT INTO telegram_persistence (namespace, kind, key, channel, owner_ids, data)"
        " VALUES ('default', 'user_data', %(n)s, 'telegram', ARRAY[%(n)s], '{\"a\": 1}')",
        {"n": name},
    )
    store.create_link_code(user, now=T0)
    # A LangGraph thread of the user's: a checkpoint, a list value (line, item) and a write.
    conn.execute(
        "WITH t AS (INSERT INTO langgraph_threads (thread_id, user_id)"
        "           VALUES ('lg-' || %(u)s::text, %(u)s) RETURNING thread_id),"
        " c AS (INSERT INTO langgraph_checkpoints (thread_id, checkpoint_ns, checkpoint_id, type,"
        "       checkpoint, versions, metadata) SELECT thread_id, '', '1', 'json', '{}', "
        "       '{\"messages\": \"1\"}', '{}' FROM t RETURNING thread_id),"
        " l AS (INSERT INTO langgraph_lines (thread_id, length) SELECT thread_id, 1 FROM t"
        "       RETURNING line_id, thread_id),"
        " i AS (INSERT INTO langgraph_items (line_id, seq, type, data)"
        "       SELECT line_id, 0, 'json', convert_to('\"hi\"', 'UTF8') FROM l),"
        " b AS (INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type,"
        "       line_id, length) SELECT thread_id, '', 'messages', '1', 'list', line_id, 1 FROM l)"
        " INSERT INTO langgraph_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,"
        " channel, type, data) SELECT thread_id, '', '1', 'task', 0, 'messages', 'json',"
        " convert_to('\"yo\"', 'UTF8') FROM c",
        {"u": user},
    )
    conn.execute(
        "INSERT INTO usage_daily (day, user_id, channel) VALUES (%s, %s, 'telegram')",
        (T0.date(), user),
    )
    return user


def test_a_user_export_holds_every_row_about_the_user(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    alice = busy_user(store, conn, "alice")
    bob = busy_user(store, conn, "bob")
    document = export_json(store, user=alice)

    assert document["format"] == "sessionkeeper-export/1"
    assert document["subject"] == {"user_id": str(alice)}
    tables = document["tables"]
    assert tables["users"][0]["display_name"] == "Alice"
    # Two sessions (a day apart), the second carrying over the first's pair.
    assert [m["content"] for m in tables["session_messages"]] == [
        *("hello from alice", "hi"),
        *("hello from alice", "hi", "later", "sure"),
    ]
    assert [m["content"] for m in tables["archived_session_messages"]] == ["archived words"]
    assert tables["session_messages"][0]["created_at"].endswith("+00:00")  # UTC
    # Every table has the user's rows (alice is linked to nobody: no person) and nobody else's.
    assert tables.pop("persons") == []
    for table, rows in tables.items():
        assert rows, f"{table} is empty"
        assert str(bob) not in json.dumps(rows), table
    assert {r["user_id"] for r in tables["usage_stats"]} == {str(alice)}


def test_aiogram_states_are_exported_by_link_or_by_the_exact_telegram_id(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    # A state written before the user's first turn has no link: the export finds it by the
    # user's Telegram id, as erasure does, and never a state of another id that reads alike.
    users = insert_users(conn, ["7", "007"])
    conn.execute(
        "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id, channel, user_id,"
        " state) VALUES (1, 7, 7, 'telegram', NULL, 'unlinked'),"
        " (1, 8, 8, 'telegram', %s, 'linked'), (2, 7, 7, 'whatsapp', NULL, 'other channel')",
        [users["007"]],
    )

    def states(channel_user_id: str) -> list[str]:
        document = export_json(store, user=users[channel_user_id])
        return [row["state"] for row in document["tables"]["aiogram_fsm_states"]]

    assert states("7") == ["unlinked"]
    assert states("007") == ["linked"]


def test_a_person_export_holds_all_its_users(store: Store, conn: psycopg.Connection[Any]) -> None:
    alice = busy_user(store, conn, "alice")
    other = store.get_or_create_user("whatsapp", "alice-phone", now=T0).user_id
    code = store.create_link_code(other, now=T0).code
    person = store.redeem_link_code(alice, code, now=T0).person_id

    document = export_json(store, person=person)
    tables = document["tables"]
    assert document["subject"] == {"person_id": str(person)}
    assert [p["person_id"] for p in tables["persons"]] == [str(person)]
    assert {u["user_id"] for u in tables["users"]} == {str(alice), str(other)}
    # The code other made and alice redeemed, and alice's own live code (retired by none).
    assert len(tables["link_codes"]) == 2
    assert export_json(store, user=other)["tables"]["persons"] == tables["persons"]


def test_unknown_and_malformed_subjects(store: Store) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound, match=f"user {missing} does not exist"):
        store.export_user(missing, io.StringIO())
    with pytest.raises(NotFound, match="person"):
        store.export_person(missing, io.StringIO())
    with pytest.raises(InvalidInput, match="user_id"):
        store.export_user("not-a-uuid", io.StringIO())
    with pytest.raises(InvalidInput, match="out"):
        store.export_user(missing, "not a file")  # type: ignore[arg-type]
    # The failed exports ended their transactions: the pool's connections are clean.
    user = store.get_or_create_user("telegram", "after").user_id
    assert json.loads(export_and_return(store, user))["tables"]["users"][0]["user_id"] == str(user)


def export_and_return(store: Store, user: Any) -> str:
    out = io.StringIO()
    store.export_user(user, out)
    return out.getvalue()


def test_a_failing_writer_leaves_the_store_usable(store: Store) -> None:
    user = store.begin_turn("telegram", "w", now=T0).user.user_id

    class Full(io.StringIO):
        def write(self, text: str, /) -> int:
            if "session_messages" in text:
                raise OSError("disk full")
            return super().write(text)

    with pytest.raises(OSError, match="disk full"):
        store.export_user(user, Full())
    assert store.export_user(user, io.StringIO()).rows["users"] == 1


def test_the_async_store_exports_the_same_document(
    database_url: str, store: Store, conn: psycopg.Connection[Any]
) -> None:
    alice = busy_user(store, conn, "alice")

    async def scenario() -> str:
        out = io.StringIO()
        async with AsyncStore(database_url) as astore:
            done = await astore.export_user(alice, out)
        assert done.rows["session_messages"] == 6
        return out.getvalue()

    from_async = json.loads(asyncio.run(scenario()))
    from_sync = export_json(store, user=alice)
    assert from_async["tables"] == from_sync["tables"]


MESSAGES = 30_000
MESSAGE_CHARS = 1_000


def long_history(conn: psycopg.Connection[Any]) -> Any:
    user = conn.execute(
        "INSERT INTO users (channel, channel_user_id) VALUES ('telegram', 'chatty')"
        " RETURNING user_id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "WITH s AS (INSERT INTO sessions (user_id, next_seq) VALUES (%s, %s) RETURNING session_id)"
        " INSERT INTO session_messages (session_id, seq, role, content)"
        " SELECT session_id, g, 'user', repeat(chr(97 + g %% 26), %s)"
        " FROM s, generate_series(0, %s - 1) g",
        (user, MESSAGES, MESSAGE_CHARS, MESSAGES),
    )
    return user


class CountingSink:
    def __init__(self) -> None:
        self.chars = 0
        self.messages = 0

    def write(self, text: str, /) -> int:
        self.chars += len(text)
        self.messages += text.count('"role":"user"')
        return len(text)


@pytest.mark.slow
def test_a_long_history_is_streamed_in_bounded_fetches(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """30,000 messages of 1,000 characters (30 MB of JSON): every statement returns at most
    256 rows, and the export's Python allocations peak far below the document's size."""
    user = long_history(conn)
    sink = CountingSink()
    fetched: list[tuple[str, int]] = []
    runner = core.Runner(export.export_user(StoreConfig(), user, sink))
    tracemalloc.start()
    try:
        with (
            psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as db,
            db.cursor() as cursor,
        ):
            for step in runner:
                cursor.execute(step.sql, step.params)
                got = cursor.pgresult
                rows = cursor.fetchall() if got and got.status == pq.ExecStatus.TUPLES_OK else []
                fetched.append((step.name, len(rows)))
                runner.feed(rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert runner.result.rows["session_messages"] == sink.messages == MESSAGES
    assert sink.chars > MESSAGES * MESSAGE_CHARS
    assert max(n for _, n in fetched) <= export.FETCH_ROWS
    assert sum(name == "export_fetch" for name, _ in fetched) >= MESSAGES / export.FETCH_ROWS
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 30 MB document"


CATALOG_TABLES = """
WITH RECURSIVE about_people(table_name) AS (
    SELECT unnest(ARRAY['users', 'persons'])
    UNION
    SELECT table_name::text FROM information_schema.columns
    WHERE table_schema = current_schema() AND column_name IN ('user_id', 'person_id', 'used_by')
    UNION
    SELECT c.conrelid::regclass::text
    FROM pg_constraint c JOIN about_people r ON c.confrelid = r.table_name::regclass
    WHERE c.contype = 'f'
)
-- A partition (of rate_limits, usage_stats) is covered by its partitioned table.
SELECT table_name FROM about_people a
JOIN pg_class c ON c.oid = a.table_name::regclass
WHERE NOT c.relispartition
"""


def test_export_and_erasure_cover_every_table_about_users_and_persons(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    """A table that holds a user or person id, or references such a table by a foreign key
    (session_messages -> sessions -> users, ...), must be in the export and in sk_forget. Add a
    table to one and not the other, or to neither, and this fails."""
    # (Less the former DEFAULT partitions: empty plain tables since revision 0022, kept for
    # 0.2.0's daemons, which only delete from them; nothing writes a row there.)
    retired = {"rate_limits_default", "usage_stats_default"}
    in_catalog = {row[0] for row in conn.execute(CATALOG_TABLES)} - retired
    assert {"users", "persons", "sessions", "session_messages", "usage_daily"} <= in_catalog
    alice = busy_user(store, conn, "alice")
    exported = set(export_json(store, user=alice)["tables"])
    forgotten = store.forget_user(alice)
    erased = set(forgotten.deleted) | set(forgotten.anonymised)
    assert exported == in_catalog, "export: missing or extra tables"
    assert erased == in_catalog, "sk_forget: missing or extra tables"


def test_cli_export(store: Store, conn: psycopg.Connection[Any], database_url: str) -> None:
    from test_cli import clean_env, sessionkeeper

    alice = busy_user(store, conn, "alice")
    env = clean_env(DATABASE_URL=database_url)
    result = sessionkeeper("export", "--user", str(alice), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tables"] == export_json(store, user=alice)["tables"]

    unknown = sessionkeeper("export", "--person", str(uuid.uuid4()), env=env)
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    assert unknown.stdout == ""
    for bad in (["--user", "alice"], [], ["--user", str(alice), "--person", str(alice)]):
        refused = sessionkeeper("export", *bad, env=env)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("sessionkeeper")
