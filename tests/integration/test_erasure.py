"""Erasure: forget_user / forget_person and ``sessionkeeper forget``, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph_support import agent_graph, user_turn
from psycopg import sql
from psycopg.types.json import Jsonb
from store_support import insert_users
from test_cli import clean_env, sessionkeeper

from sessionkeeper.admin import citus
from store import (
    ANONYMOUS_USER_ID,
    AsyncStore,
    ErasureBlocked,
    InvalidInput,
    NotFound,
    Store,
    Turn,
)
from store.integrations.langgraph import SessionkeeperSaver, thread_config
from store.schema import metadata

DAY = datetime(2026, 11, 1, 12, tzinfo=UTC)


@dataclass
class World:
    alice: uuid.UUID  # telegram, linked with alice_wa under one person
    alice_wa: uuid.UUID
    bob: uuid.UUID
    person: uuid.UUID


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url) as opened:
        yield opened


def build_world(store: Store, conn: psycopg.Connection[Any]) -> World:
    alice = store.get_or_create_user("telegram", 1001, display_name="Alice 🌷").user_id
    alice_wa = store.get_or_create_user("whatsapp", "+41790000001").user_id
    bob = store.get_or_create_user("telegram", 2002, display_name="Bob").user_id
    linked = store.redeem_link_code(alice_wa, store.create_link_code(alice).code)
    store.create_link_code(alice)  # a live code too
    for user, n in ((alice, 3), (alice_wa, 2), (bob, 4)):
        session = store.get_or_create_session(user).session_id
        for i in range(n):
            store.append_messages(
                session,
                [{"role": "user", "content": f"q{i} ☕"}, {"role": "assistant", "content": "a"}],
            )
        store.check_rate_limit(user)
        store.track_usage(user, "telegram", 100, 20, 5)
        store.track_usage(user, "telegram", 50, 10, 0)
        store.register_proactive_user(f"chat-{user}", user)
        # What the jobs would have written: a rollup, an archive, a snapshot, a failure.
        conn.execute(
            "INSERT INTO usage_daily (day, user_id, channel, requests, input_tokens,"
            " output_tokens, cached_tokens) VALUES (%s, %s, 'telegram', 7, 700, 70, 7)",
            [DAY.date(), user],
        )
        archived = uuid.uuid4()
        conn.execute(
            "INSERT INTO archived_sessions (session_id, user_id, created_at, last_active,"
            " next_seq) VALUES (%s, %s, %s, %s, 2)",
            [archived, user, DAY, DAY],
        )
        conn.execute(
            "INSERT INTO archived_session_messages VALUES (%s, 0, 'user', 'old', %s),"
            " (%s, 1, 'assistant', 'older', %s)",
            [archived, DAY, archived, DAY],
        )
        conn.execute("INSERT INTO proactive_user_list (user_id, chat_id) VALUES (%s, 'c')", [user])
        conn.execute(
            "INSERT INTO link_code_failures (user_id, window_start, failures)"
            " VALUES (%s, now(), 2) ON CONFLICT DO NOTHING",
            [user],
        )
        # aiogram FSM states: one linked to the user, one written before its first turn
        # (found by its Telegram id), in a private chat (chat id = user id).
        telegram_id = {alice: 1001, bob: 2002}.get(user)
        if telegram_id:
            conn.execute(
                "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id, channel,"
                " user_id, state) VALUES (42, %s, %s, 'telegram', %s, 'linked'),"
                " (43, %s, %s, 'telegram', NULL, 'unlinked')",
                [telegram_id, telegram_id, user, telegram_id, telegram_id],
            )
            # python-telegram-bot persistence: the user's user_data, its private chat's
            # chat_data (found by owner_ids), a group's chat_data (nobody's).
            conn.execute(
                "INSERT INTO telegram_persistence (namespace, kind, key, channel, owner_ids,"
                " data) VALUES ('default', 'user_data', %(t)s, 'telegram', ARRAY[%(t)s], '{}'),"
                " ('default', 'chat_data', %(t)s, 'telegram', ARRAY[%(t)s], '{}'),"
                " ('default', 'chat_data', '-' || %(t)s, 'telegram', '{}', '{}')",
                {"t": str(telegram_id)},
            )
        conn.execute(
            "INSERT INTO legacy_quarantined_messages (session_id, array_index, user_id, reason,"
            " message) VALUES (%s, 0, %s, 'unknown role', %s)",
            [uuid.uuid4(), user, Jsonb({"role": "function", "content": "x"})],
        )
    return World(alice, alice_wa, bob, linked.person_id)


def rows_about(conn: psycopg.Connection[Any], user: uuid.UUID) -> dict[str, int]:
    """Rows in every table of ours that name the user (history through its sessions)."""
    counts = {}
    for name, table in metadata.tables.items():
        for column in ("user_id", "used_by"):
            if column in table.c:
                row = conn.execute(
                    f"SELECT count(*) FROM {name} WHERE {column} = %s", [user]
                ).fetchone()
                assert row is not None
                counts[f"{name}.{column}"] = row[0]
    row = conn.execute(
        "SELECT count(*) FROM session_messages m JOIN sessions s USING (session_id)"
        " WHERE s.user_id = %s",
        [user],
    ).fetchone()
    assert row is not None
    counts["session_messages"] = row[0]
    return {k: v for k, v in counts.items() if v}


def usage_totals(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """All tokens and requests, rolled up or not: what anonymisation must keep."""
    row = conn.execute(
        "WITH pending AS (SELECT * FROM usage_stats WHERE NOT rolled_up OR rolled_up IS NULL"
        "    AND inserted_xid >= (SELECT watermark FROM usage_rollup_state))"
        "SELECT (SELECT sum(requests) FROM usage_daily) + (SELECT count(*) FROM pending),"
        " (SELECT sum(input_tokens + output_tokens + cached_tokens) FROM usage_daily)"
        " + (SELECT coalesce(sum(input_tokens + output_tokens + cached_tokens), 0)"
        "    FROM pending)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_forget_user_removes_everything_about_it(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    world = build_world(store, conn)
    bob_before = rows_about(conn, world.bob)
    totals = usage_totals(conn)

    forgotten = store.forget_user(world.alice)

    assert rows_about(conn, world.alice) == {}
    assert rows_about(conn, world.bob) == bob_before
    assert forgotten.deleted == {
        "session_messages": 6,
        "turn_receipts": 0,  # her turns were appended without finish_turn
        "sessions": 1,
        "archived_session_messages": 2,
        "archived_sessions": 1,
        "legacy_quarantined_messages": 1,
        "link_codes": 2,  # the redeemed one and the live one
        "link_code_failures": 1,
        "rate_limits": 1,
        "proactive_users": 1,
        "proactive_user_list": 1,
        "aiogram_fsm_states": 2,  # the linked one and the one found by her Telegram id
        "telegram_persistence": 2,  # her user_data and private chat_data, not the group's
        "usage_stats": 2,
        "users": 1,
        "persons": 0,  # alice_wa still belongs to the person
        # She has no LangGraph thread here (test_langgraph.py erases real ones).
        **dict.fromkeys(
            (
                "langgraph_writes",
                "langgraph_checkpoints",
                "langgraph_blobs",
                "langgraph_items",
                "langgraph_lines",
                "langgraph_threads",
            ),
            0,
        ),
    }
    assert forgotten.anonymised == {"usage_daily": 1}
    assert conn.execute(
        "SELECT telegram_user_id, state FROM aiogram_fsm_states ORDER BY 1, 2"
    ).fetchall() == [(2002, "linked"), (2002, "unlinked")]
    assert usage_totals(conn) == totals
    # Alice's rollup, and her raw usage that was not rolled up yet, now anonymous.
    anonymous = conn.execute(
        "SELECT requests, input_tokens FROM usage_daily WHERE user_id = %s", [ANONYMOUS_USER_ID]
    ).fetchall()
    assert sorted(anonymous) == [(2, 150), (7, 700)]
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (1,)
    assert [u.user_id for u in store.get_linked_users(world.alice_wa)] == [world.alice_wa]


def test_forget_person_removes_all_its_users(store: Store, conn: psycopg.Connection[Any]) -> None:
    world = build_world(store, conn)
    totals = usage_totals(conn)

    forgotten = store.forget_person(world.person)

    assert rows_about(conn, world.alice) == rows_about(conn, world.alice_wa) == {}
    assert forgotten.deleted["users"] == 2 and forgotten.deleted["persons"] == 1
    assert forgotten.deleted["session_messages"] == 10
    assert forgotten.anonymised == {"usage_daily": 2}
    assert usage_totals(conn) == totals
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)
    assert store.get_history(store.get_or_create_session(world.bob).session_id)


def test_unlinked_aiogram_states_go_by_the_exact_telegram_id(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    # sk_forget finds a state written before the user's first turn by (channel, id): the
    # states whose telegram_user_id::text is the channel user id, and no others, whatever
    # that id looks like (an index lookup on the bigint since issue 24).
    top = 2**63 - 1
    ids = ["7", "007", "-7", str(top), str(top + 1), "alice", ""]
    users = insert_users(conn, ids)
    for telegram_id in (7, -7, top, 8):
        conn.execute(
            "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id, channel, state)"
            " VALUES (1, %s, %s, 'telegram', 'unlinked'), (2, %s, %s, 'whatsapp', 'other')",
            [telegram_id, telegram_id, telegram_id, telegram_id],
        )

    def states() -> list[int]:
        rows = conn.execute(
            "SELECT telegram_user_id FROM aiogram_fsm_states WHERE channel = 'telegram' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    deleted = {
        cid: store.forget_user(users[cid]).deleted["aiogram_fsm_states"]
        for cid in ("007", "alice", "", str(top + 1))
    }
    assert deleted == {"007": 0, "alice": 0, "": 0, str(top + 1): 0}
    assert states() == [-7, 7, 8, top]
    deleted = {
        cid: store.forget_user(users[cid]).deleted["aiogram_fsm_states"]
        for cid in ("7", "-7", str(top))
    }
    assert deleted == {"7": 1, "-7": 1, str(top): 1}
    assert states() == [8]
    # Another channel's states under the same numbers stay.
    assert conn.execute(
        "SELECT count(*) FROM aiogram_fsm_states WHERE channel = 'whatsapp'"
    ).fetchone() == (4,)


def test_the_last_user_of_a_person_takes_the_person_along(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    world = build_world(store, conn)
    store.forget_user(world.alice)
    assert store.forget_user(world.alice_wa).deleted["persons"] == 1
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)


def test_unknown_and_malformed_ids(store: Store) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        store.forget_user(uuid.uuid4())
    with pytest.raises(NotFound, match="person"):
        store.forget_person(uuid.uuid4())
    with pytest.raises(InvalidInput):
        store.forget_user("not-a-uuid")
    with pytest.raises(InvalidInput):
        store.forget_person(42)  # type: ignore[arg-type]


def test_a_foreign_reference_blocks_and_erases_nothing(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    world = build_world(store, conn)
    # Another subsystem's table, as on a database adopted from the TypeScript system.
    conn.execute("CREATE TABLE memories (user_id uuid REFERENCES users (user_id), note text)")
    conn.execute("INSERT INTO memories VALUES (%s, 'likes tea')", [world.bob])
    before = rows_about(conn, world.bob)
    with pytest.raises(ErasureBlocked, match="memories"):
        store.forget_user(world.bob)
    assert rows_about(conn, world.bob) == before


def test_async_store_forgets_too(database_url: str, conn: psycopg.Connection[Any]) -> None:
    with Store(database_url) as sync_store:
        user = sync_store.get_or_create_user("telegram", 3003).user_id

    async def forget() -> dict[str, int]:
        async with AsyncStore(database_url) as store:
            return dict((await store.forget_user(user)).deleted)

    assert asyncio.run(forget())["users"] == 1
    assert rows_about(conn, user) == {}


def test_cli_forget(store: Store, conn: psycopg.Connection[Any], database_url: str) -> None:
    world = build_world(store, conn)
    env = clean_env(DATABASE_URL=database_url)

    result = sessionkeeper("forget", "--yes", "--person", str(world.person), env=env)
    assert result.returncode == 0, result.stderr
    assert f"forgot person {world.person}:" in result.stdout
    assert "  users: 2 deleted" in result.stdout
    assert "  usage_daily: 2 anonymised" in result.stdout

    unknown = sessionkeeper("forget", "--yes", "--user", str(uuid.uuid4()), env=env)
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    for bad in (["--user", "bob"], [], ["--user", str(world.bob), "--person", str(world.bob)]):
        refused = sessionkeeper("forget", *bad, env=env)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("sessionkeeper")
    assert rows_about(conn, world.bob) != {}


# -- nothing of a user left, in any table the catalog knows -------------------------------------

# Tables that never hold anything of a user, by design. Every other table of the schema must
# receive the user from the fill below (so the scan after erasure means something): a table
# added later fails test_erasure_leaves_nothing until FILL (or this list) names it.
HOLDS_NO_USER = frozenset(
    {
        "alembic_version",
        "applied_functions",
        "job_runs",
        "job_probes",
        "usage_rollup_state",
        "user_key_secret",
        "proactive_list_state",
        # Erased accounts' lock-outs: keyed by a hash, written by erasure (the scan checks it
        # holds no id afterwards, like every table).
        "link_code_erased_failures",
        # Erased users' records for the python-telegram-bot persistence: keyed by a hash,
        # written by erasure (the scan checks they name no id, like every table).
        "telegram_persistence_erasures",
        # The former DEFAULT partitions (plain tables since revision 0022, kept for 0.2.0's
        # daemons): nothing writes a row there any more.
        "rate_limits_default",
        "usage_stats_default",
    }
)
# Tables whose rows name no id as text (binary content) and belong to a user only through
# another table's row: checked by what is left of them (items_of_users) instead of the scan.
REACHED_THROUGH = {"langgraph_items": "langgraph_lines"}
ITEMS_OF_USERS = (
    "SELECT count(*) FROM langgraph_items i JOIN langgraph_lines l USING (line_id)"
    " JOIN langgraph_threads t USING (thread_id) WHERE t.user_id = ANY(%s)"
)


def item_counts(conn: psycopg.Connection[Any], users: list[uuid.UUID]) -> tuple[int, int]:
    """(LangGraph items of ``users``' threads, all items)."""
    mine = conn.execute(ITEMS_OF_USERS, [users]).fetchone()
    every = conn.execute("SELECT count(*) FROM langgraph_items").fetchone()
    assert mine is not None and every is not None
    return int(mine[0]), int(every[0])


# One user's rows in the tables the store's calls do not write (jobs', integrations', tools'),
# one statement per table. Parameters: user, channel, channel_user_id, old_user_id (its id
# before `citus-ddl` re-keyed it), archived (a session id), day. Add a table here when you add
# one to the schema.
FILL: dict[str, str] = {
    "usage_daily": "INSERT INTO usage_daily (day, user_id, channel, requests)"
    " VALUES (%(day)s, %(user)s, 'telegram', 7)",
    "archived_sessions": "INSERT INTO archived_sessions (session_id, user_id, created_at,"
    " last_active, next_seq) VALUES (%(archived)s, %(user)s, %(day)s, %(day)s, 1)",
    "archived_session_messages": "INSERT INTO archived_session_messages (session_id, seq, role,"
    " content, created_at) VALUES (%(archived)s, 0, 'user', 'old', %(day)s)",
    "proactive_user_list": "INSERT INTO proactive_user_list (user_id, chat_id)"
    " VALUES (%(user)s, %(channel_user_id)s)",
    "link_code_failures": "INSERT INTO link_code_failures (user_id, window_start, failures)"
    " VALUES (%(user)s, now(), 2)",
    "legacy_quarantined_messages": "INSERT INTO legacy_quarantined_messages (session_id,"
    " array_index, user_id, reason, message)"
    " VALUES (gen_random_uuid(), 0, %(user)s, 'unknown role', '{}')",
    # Keyed by the channel identity only (written before the user's first turn).
    "aiogram_fsm_states": "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id,"
    " channel, state) VALUES (42, %(channel_user_id)s::bigint, %(channel_user_id)s::bigint,"
    " %(channel)s, 'asking')",
    "user_id_rekeys": "INSERT INTO user_id_rekeys (old_user_id, new_user_id)"
    " VALUES (%(old_user_id)s, %(user)s)",
    # python-telegram-bot persistence: the user's user_data, found by its channel id.
    "telegram_persistence": "INSERT INTO telegram_persistence (namespace, kind, key, channel,"
    " owner_ids, data) VALUES ('default', 'user_data', %(channel_user_id)s, %(channel)s,"
    ' ARRAY[%(channel_user_id)s], \'{"likes": "tea"}\')',
}


def checkpoint_a_thread(store: Store, turn: Turn) -> None:
    """The user's LangGraph thread: a graph's turn, and a checkpoint with a pending write."""
    saver = SessionkeeperSaver(store)
    agent_graph(saver).invoke(user_turn(1), thread_config(turn))
    notes = empty_checkpoint()
    notes["channel_values"] = {"notes": {"likes": ["tea"]}}
    notes["channel_versions"] = {"notes": "1"}
    side = thread_config(turn, conversation="notes")
    stored = saver.put(side, notes, {"source": "input"}, {"notes": "1"})
    saver.put_writes(stored, [("notes", {"likes": ["coffee"]})], "task-1")


@dataclass
class Filled:
    ids: list[str]  # per user: id, channel id, old id, session ids; then the person's id
    users: list[uuid.UUID]
    person: uuid.UUID


def fill_everything(store: Store, conn: psycopg.Connection[Any]) -> Filled:
    """Two users (Telegram and WhatsApp, one person) in every table: through the store's calls
    where it writes, through FILL elsewhere."""
    conn.execute(citus.USER_ID_REKEYS)  # as `sessionkeeper citus-ddl` makes it
    ids, users = [], []
    for channel, channel_user_id in (("telegram", "7331905514"), ("whatsapp", "41790004242")):
        turn = store.begin_turn(channel, channel_user_id, display_name="Eve")
        store.finish_turn(turn, "hello", "hi", input_tokens=3)
        user = turn.user.user_id
        store.check_rate_limit(user)
        store.track_usage(user, channel, 1, 2, 3)
        store.register_proactive_user(f"chat-{channel_user_id}", user)
        store.create_link_code(user)
        checkpoint_a_thread(store, turn)
        params = {
            "user": user,
            "channel": channel,
            "channel_user_id": channel_user_id,
            "old_user_id": uuid.uuid4(),
            "archived": uuid.uuid4(),
            "day": DAY,
        }
        for statement in FILL.values():
            conn.execute(statement, params)
        ids += [str(user), channel_user_id, str(params["old_user_id"])]
        ids += [str(turn.session_id), str(params["archived"])]  # rows named by a session
        users.append(user)
    # Linked: the second redeems the first's code (link_codes.used_by names it).
    linked = store.redeem_link_code(users[1], store.create_link_code(users[0]).code)
    return Filled([*ids, str(linked.person_id)], users, linked.person_id)


def schema_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table of the schema, from the catalog (a partitioned table once: scanning it
    scans its partitions)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace"
        " AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def tables_naming(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, list[str]]:
    """Per table, which of ``ids`` appear anywhere in its rows (any column, as text)."""
    found: dict[str, list[str]] = {}
    for table in schema_tables(conn):
        query = sql.SQL("SELECT %s FROM {} t WHERE t::text LIKE '%%' || %s || '%%' LIMIT 1")
        hits = [
            i for i in ids if conn.execute(query.format(sql.Identifier(table)), [1, i]).fetchone()
        ]
        if hits:
            found[table] = hits
    return found


@pytest.mark.parametrize("erase", ["forget_user", "forget_person"])
def test_erasure_leaves_nothing_in_any_table(
    store: Store, conn: psycopg.Connection[Any], erase: str
) -> None:
    filled = fill_everything(store, conn)
    # The fill reaches every table but those that hold nothing of a user by design.
    before = tables_naming(conn, filled.ids)
    missing = set(schema_tables(conn)) - set(before) - HOLDS_NO_USER - set(REACHED_THROUGH)
    assert not missing, f"add these tables to FILL (or to HOLDS_NO_USER): {sorted(missing)}"
    bystander = store.begin_turn("telegram", "5550001", display_name="Bob").user.user_id
    erased = filled.users[:1] if erase == "forget_user" else filled.users
    kept = [u for u in filled.users if u not in erased]
    assert item_counts(conn, erased)[0] > 0

    if erase == "forget_user":
        forgotten = store.forget_user(filled.users[0])
        gone = filled.ids[:5]  # the first user's
        assert forgotten.deleted["user_id_rekeys"] == 1
    else:
        forgotten = store.forget_person(filled.person)
        gone = filled.ids
        assert forgotten.deleted["user_id_rekeys"] == 2

    assert tables_naming(conn, gone) == {}
    # The items left are the kept users' own, to the last one.
    assert item_counts(conn, kept)[0] == item_counts(conn, kept)[1]
    assert tables_naming(conn, [str(bystander)])  # erasure took nobody else's rows


# Tables the benchmark's backlog makes large, each with a row for every one of CROWD users.
CROWD = 5000
CROWDED = {
    # Codes made by one user and redeemed by the next (found by user_id and by used_by).
    "link_codes": "INSERT INTO link_codes (code, user_id, expires_at, used_at, used_by)"
    " SELECT 'c' || n, user_id, now(), now(), lead(user_id) OVER (ORDER BY n) FROM crowd",
    # States written before the users' first turn: found by (channel, Telegram id) only.
    "aiogram_fsm_states": "INSERT INTO aiogram_fsm_states (bot_id, chat_id, telegram_user_id,"
    " channel, state) SELECT 1, n, n, 'telegram', 's' FROM crowd",
    "telegram_persistence": "INSERT INTO telegram_persistence (namespace, kind, key, channel,"
    " owner_ids, data) SELECT 'default', 'user_data', n::text, 'telegram', ARRAY[n::text], '{}'"
    " FROM crowd",
    "usage_daily": "INSERT INTO usage_daily (day, user_id, channel, requests, input_tokens,"
    " output_tokens, cached_tokens) SELECT current_date, user_id, 'telegram', 1, 1, 1, 1"
    " FROM crowd",
    "archived_sessions": "INSERT INTO archived_sessions (session_id, user_id, created_at,"
    " last_active, next_seq) SELECT gen_random_uuid(), user_id, now(), now(), 0 FROM crowd",
    "link_code_failures": "INSERT INTO link_code_failures (user_id, window_start, failures)"
    " SELECT user_id, now(), 1 FROM crowd",
}


def test_erasure_reads_no_large_table_whole(store: Store, conn: psycopg.Connection[Any]) -> None:
    # Issue 24: an erasure is a few index lookups per table. A sequential scan of a table that
    # grows with the users (link_codes by used_by, aiogram states by Telegram id) made the
    # user_retention job forget 46 users/s on the benchmark's backlog.
    conn.execute(
        "CREATE TEMP TABLE crowd AS SELECT n, sk_user_key('telegram', n::text) AS user_id"
        " FROM generate_series(1, %s) n",
        [CROWD],
    )
    conn.execute(
        "INSERT INTO users (user_id, channel, channel_user_id)"
        " SELECT user_id, 'telegram', n::text FROM crowd"
    )
    for statement in CROWDED.values():
        conn.execute(statement)
    conn.execute("ANALYZE")
    row = conn.execute("SELECT user_id FROM crowd WHERE n = %s", [CROWD // 2]).fetchone()
    assert row is not None
    with conn.transaction():
        done = {
            table: n for table, _, n in conn.execute("SELECT * FROM sk_forget(%s, NULL)", [row[0]])
        }
        whole = conn.execute(
            "SELECT relname FROM pg_stat_xact_user_tables"
            " WHERE seq_scan > 0 AND relname = ANY(%s) ORDER BY 1",
            [list(CROWDED)],
        ).fetchall()
    assert whole == []
    # It found the user's rows all the same: its own code and the one it redeemed, its state.
    assert {t: done[t] for t in CROWDED} == {
        "link_codes": 2,
        "aiogram_fsm_states": 1,
        "telegram_persistence": 1,
        "usage_daily": 1,  # anonymised
        "archived_sessions": 1,
        "link_code_failures": 1,
    }
