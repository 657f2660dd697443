"""store.integrations.langgraph with the real LangGraph on PostgreSQL: a graph that resumes in
a new process, bad input, threads tied to users (erasure, export), and linear storage."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph_support import agent_graph, user_turn
from psycopg.rows import dict_row

from store import AsyncStore, InvalidInput, NotFound, Store
from store.integrations.langgraph import (
    USER_KEY,
    AsyncSessionkeeperSaver,
    SessionkeeperSaver,
    thread_config,
    thread_id_for,
)

SUPPORT = Path(__file__).with_name("langgraph_support.py")
ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "langgraph_threads",
    "langgraph_checkpoints",
    "langgraph_blobs",
    "langgraph_lines",
    "langgraph_items",
    "langgraph_writes",
)


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


def config_of(**configurable: Any) -> RunnableConfig:
    return {"configurable": configurable}


def run_phase(phase: str, url: str, config: RunnableConfig) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SUPPORT.parent)])}
    result = subprocess.run(
        [sys.executable, str(SUPPORT), phase, url, json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_an_interrupted_graph_resumes_from_the_store_in_a_new_process(database_url: str) -> None:
    with Store(database_url) as db:
        turn = db.begin_turn("telegram", "4242")
    config = thread_config(turn)

    asked = run_phase("ask", database_url, config)
    assert asked["interrupts"] == [{"approve": "lookup"}]
    assert [kind for kind, _ in asked["messages"]] == ["human", "ai"]

    resumed = run_phase("resume", database_url, config)
    assert resumed["interrupts"] == []
    assert [kind for kind, _ in resumed["messages"]] == ["human", "ai", "tool", "ai"]
    assert resumed["messages"][2][1].startswith("approved: result for question 1")

    with Store(database_url) as db:
        saved = SessionkeeperSaver(db).get_tuple(config)
    assert saved is not None
    assert len(saved.checkpoint["channel_values"]["messages"]) == 4
    assert saved.config["configurable"]["thread_id"] == thread_id_for(turn)


def test_bad_input_raises_a_typed_error_and_writes_nothing(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    checkpoint = empty_checkpoint()
    with Store(database_url) as db:
        saver = SessionkeeperSaver(db)
        with pytest.raises(InvalidInput, match="thread_id must be a string"):
            saver.put(config_of(thread_id=42, checkpoint_ns=""), checkpoint, {}, {})
        bad = empty_checkpoint()
        bad["channel_values"] = {"messages": ["fine", object()]}
        bad["channel_versions"] = {"messages": "1"}
        config = config_of(thread_id="t1", checkpoint_ns="")
        with pytest.raises(InvalidInput, match="cannot encode object"):
            saver.put(config, bad, {}, {"messages": "1"})
        with pytest.raises(InvalidInput, match=USER_KEY):
            saver.put(config_of(thread_id="t1", **{USER_KEY: "nobody"}), checkpoint, {}, {})
        assert counts(conn) == dict.fromkeys(TABLES, 0)

        stored = saver.put(config, checkpoint, {}, {})
        missing = config_of(**{**stored["configurable"], "checkpoint_id": "not-stored"})
        with pytest.raises(NotFound, match="not stored"):
            saver.put_writes(missing, [("messages", "hello")], "task-1")
        with pytest.raises(InvalidInput, match="cannot encode"):
            saver.put_writes(stored, [("a", "fine"), ("b", object())], "task-1")
    assert counts(conn)["langgraph_writes"] == 0

    async def on_async() -> None:
        async with AsyncStore(database_url) as adb:
            asaver = AsyncSessionkeeperSaver(adb)
            with pytest.raises(NotFound):
                await asaver.aput_writes(missing, [("messages", "hello")], "task-1")
            with pytest.raises(InvalidInput, match="thread_id"):
                await asaver.aget_tuple(config_of(thread_id=b"t1"))

    asyncio.run(on_async())
    assert counts(conn)["langgraph_writes"] == 0


def test_a_users_threads_are_exported_decoded_and_erased_with_the_user(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as db:
        saver = SessionkeeperSaver(db)
        turn = db.begin_turn("telegram", "77")
        mine = thread_config(turn)
        agent_graph(saver).invoke(user_turn(1), mine)
        # A JSON-shaped channel is exported decoded.
        notes = empty_checkpoint()
        notes["channel_values"] = {"notes": {"likes": ["tea"]}, "steps": [1, 2]}
        notes["channel_versions"] = {"notes": "1", "steps": "1"}
        side = thread_config(turn, conversation="notes")
        stored = saver.put(side, notes, {"source": "input"}, {"notes": "1", "steps": "1"})
        saver.put_writes(stored, [("notes", {"likes": ["coffee"]})], "task-1")
        # A thread with no user: erasure cannot reach it.
        free = config_of(thread_id="free")
        agent_graph(saver).invoke(user_turn(1), free)

        out = io.StringIO()
        db.export_user(turn.user.user_id, out)
        tables = json.loads(out.getvalue())["tables"]
        assert [t["thread_id"] for t in tables["langgraph_threads"]] == sorted(
            [thread_id_for(turn), thread_id_for(turn, "notes")]
        )
        docs = tables["langgraph_checkpoints"]
        assert {d["thread_id"] for d in docs} == {thread_id_for(turn), thread_id_for(turn, "notes")}
        side_doc = next(d for d in docs if d["thread_id"] == thread_id_for(turn, "notes"))
        assert side_doc["channel_values"] == {"notes": {"likes": ["tea"]}, "steps": [1, 2]}
        assert side_doc["metadata"]["source"] == "input"
        noted = [w["value"] for w in tables["langgraph_writes"] if w["channel"] == "notes"]
        assert noted == [{"likes": ["coffee"]}]
        # Messages are the serializer's (msgpack): their type and bytes, one per message.
        final = max(
            (d for d in docs if d["thread_id"] == thread_id_for(turn)),
            key=lambda d: d["checkpoint_id"],
        )
        assert [m["type"] for m in final["channel_values"]["messages"]] == ["zlib+msgpack"] * 4

        forgotten = db.forget_user(turn.user.user_id)
        assert forgotten.deleted["langgraph_threads"] == 2
        assert forgotten.deleted["langgraph_checkpoints"] == len(docs)
        assert forgotten.deleted["langgraph_items"] >= 4
        assert saver.get_tuple(mine) is None
        assert saver.get_tuple(free) is not None
    left = conn.execute("SELECT array_agg(DISTINCT thread_id) FROM langgraph_checkpoints")
    assert left.fetchone()[0] == ["free"]  # type: ignore[index]
    others = conn.execute(
        "SELECT count(*) FROM langgraph_items i JOIN langgraph_lines l USING (line_id)"
        " WHERE l.thread_id <> 'free'"
    ).fetchone()
    assert others == (0,)


SIZE_SK = """
SELECT (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM langgraph_checkpoints t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM langgraph_blobs t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM langgraph_writes t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM langgraph_lines t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM langgraph_items t)
"""
SIZE_REFERENCE = """
SELECT (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM checkpoints t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM checkpoint_blobs t)
     + (SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM checkpoint_writes t)
"""


def grow(graph: Any, conn: psycopg.Connection[Any], size: str, turns: int) -> list[int]:
    """Bytes stored after each turn of one thread (row sizes, not pages: no page rounding)."""
    config = config_of(thread_id="grow")
    sizes = [conn.execute(size).fetchone()[0]]  # type: ignore[index]
    for n in range(1, turns + 1):
        graph.invoke(user_turn(n), config)
        sizes.append(conn.execute(size).fetchone()[0])  # type: ignore[index]
    return sizes


def test_storage_grows_linearly_and_is_a_fraction_of_the_reference(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as db:
        ours = grow(agent_graph(SessionkeeperSaver(db)), conn, SIZE_SK, 100)
    with psycopg.Connection.connect(
        database_url, autocommit=True, prepare_threshold=0, row_factory=dict_row
    ) as pg:
        reference_saver = PostgresSaver(pg)
        reference_saver.setup()
        theirs = grow(agent_graph(reference_saver), conn, SIZE_REFERENCE, 100)

    def per_turn(sizes: list[int], turn: int) -> int:
        return sizes[turn] - sizes[turn - 1]

    ratio = per_turn(ours, 100) / per_turn(ours, 10)
    reference_ratio = per_turn(theirs, 100) / per_turn(theirs, 10)
    share = ours[100] / theirs[100]
    print(f"per turn 100 / turn 10: ours {ratio:.2f}, reference {reference_ratio:.2f}")
    print(f"after 100 turns: ours {ours[100]} B, reference {theirs[100]} B ({share:.3f}x)")
    assert ratio <= 1.2
    assert reference_ratio > 3  # the measurement sees quadratic growth where there is some
    assert share <= 0.05


def test_user_retention_removes_the_threads_of_the_users_it_forgets(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    from datetime import UTC, datetime, timedelta

    from sessionkeeper.jobs import user_retention

    with Store(database_url) as db:
        saver = SessionkeeperSaver(db)
        gone = db.begin_turn("telegram", "old-timer")
        kept = db.begin_turn("telegram", "regular")
        agent_graph(saver).invoke(user_turn(1), thread_config(gone))
        agent_graph(saver).invoke(user_turn(1), thread_config(kept))
    now = datetime.now(UTC)
    for table in ("users", "sessions"):
        column = "updated_at" if table == "users" else "last_active"
        conn.execute(
            f"UPDATE {table} SET {column} = %s WHERE user_id = %s",
            (now - timedelta(days=400), gone.user.user_id),
        )
    result = user_retention.run(conn, user_retention.Settings(), now)
    assert result.details["forgotten"] == 1
    threads = conn.execute("SELECT thread_id FROM langgraph_threads").fetchall()
    assert threads == [(thread_id_for(kept),)]
    assert counts(conn)["langgraph_checkpoints"] > 0
    left = conn.execute("SELECT DISTINCT thread_id FROM langgraph_checkpoints").fetchall()
    assert left == [(thread_id_for(kept),)]


def test_forks_from_an_older_checkpoint_keep_every_branch_whole(database_url: str) -> None:
    def checkpoint(messages: list[str], version: int) -> Any:
        c = empty_checkpoint()
        c["channel_values"] = {"messages": messages}
        c["channel_versions"] = {"messages": version}
        return c

    def read(saver: SessionkeeperSaver, stored: RunnableConfig) -> Any:
        found = saver.get_tuple(stored)
        assert found is not None
        return found.checkpoint["channel_values"]["messages"]

    with Store(database_url) as db:
        saver = SessionkeeperSaver(db)
        root = config_of(thread_id="fork", checkpoint_ns="")
        c1 = saver.put(root, checkpoint(["a"], 1), {}, {"messages": 1})
        c2 = saver.put(c1, checkpoint(["a", "b"], 2), {}, {"messages": 2})
        # A fork the saver sees coming (its remembered value is c2's) ...
        c3 = saver.put(c1, checkpoint(["a", "x"], 3), {}, {"messages": 3})
        # ... and one it does not: it remembers c1's value, whose line c2 extended meanwhile,
        # so the database refuses the extension and the value goes to a new line.
        assert read(saver, c1) == ["a"]
        c4 = saver.put(c1, checkpoint(["a", "y", "z"], 4), {}, {"messages": 4})
        fresh = SessionkeeperSaver(db)  # nothing remembered: every value read from the rows
        assert [read(fresh, c) for c in (c1, c2, c3, c4)] == [
            ["a"],
            ["a", "b"],
            ["a", "x"],
            ["a", "y", "z"],
        ]


def test_the_async_savers_sync_methods_run_on_its_loop(database_url: str) -> None:
    """``graph.invoke`` from a worker thread of an asyncio bot: the sync methods run the async
    ones on the saver's loop; called on that loop itself they would deadlock, and raise."""

    async def main() -> None:
        async with AsyncStore(database_url) as db:
            saver = AsyncSessionkeeperSaver(db)
            root = config_of(thread_id="twins", checkpoint_ns="")
            stored = await saver.aput(root, empty_checkpoint(), {}, {})
            with pytest.raises(InvalidInput, match="own event loop"):
                saver.get_tuple(stored)

            def from_a_thread() -> list[Any]:
                again = saver.put(stored, empty_checkpoint(), {"step": 1}, {})
                saver.put_writes(again, [("a", "b")], "task-1")
                found = saver.get_tuple(root)
                assert found is not None and found.pending_writes == [("task-1", "a", "b")]
                listed = [t.metadata.get("step") for t in saver.list(root)]
                saver.delete_thread("twins")
                return [listed, saver.get_tuple(root)]

            assert await asyncio.to_thread(from_a_thread) == [[1, None], None]

    asyncio.run(main())


def test_the_saver_holds_no_message_its_bot_let_go(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The messages a read returned extend the thread's line while the bot holds them (only the
    new one is written); once it lets them go the saver keeps none alive, and a value of equal
    but new messages then goes to a new line, read back whole."""
    from langchain_core.messages import AIMessage, HumanMessage

    def checkpoint(messages: list[Any], version: int) -> Any:
        c = empty_checkpoint()
        c["channel_values"] = {"messages": messages}
        c["channel_versions"] = {"messages": version}
        return c

    def items_and_lines() -> tuple[int, int]:
        c = counts(conn)
        return c["langgraph_items"], c["langgraph_lines"]

    with Store(database_url) as db:
        saver = SessionkeeperSaver(db)
        first = [HumanMessage("hello", id="1"), AIMessage("hi", id="2")]
        c1 = saver.put(
            config_of(thread_id="weak", checkpoint_ns=""), checkpoint(first, 1), {}, {"messages": 1}
        )
        del first
        found = saver.get_tuple(c1)
        assert found is not None
        read = found.checkpoint["channel_values"]["messages"]
        before = items_and_lines()
        c2 = saver.put(
            c1, checkpoint([*read, HumanMessage("again", id="3")], 2), {}, {"messages": 2}
        )
        assert items_and_lines() == (before[0] + 1, before[1])  # the new message, same line
        probe = weakref.ref(read[0])
        del found, read
        gc.collect()
        assert probe() is None
        equal = [
            HumanMessage("hello", id="1"),
            AIMessage("hi", id="2"),
            HumanMessage("again", id="3"),
        ]
        c3 = saver.put(c2, checkpoint([*equal, AIMessage("bye", id="4")], 3), {}, {"messages": 3})
        assert items_and_lines()[1] == before[1] + 1  # a new line
        fresh = SessionkeeperSaver(db)
        latest = fresh.get_tuple(c3)
        assert latest is not None
        assert [m.text for m in latest.checkpoint["channel_values"]["messages"]] == [
            "hello",
            "hi",
            "again",
            "bye",
        ]


def test_a_long_thread_reads_back_whole_from_a_few_rows(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Items are sealed into chunks as the line grows (16, then 256): every checkpoint, old or
    new, still reads back exactly the messages LangGraph's own saver holds, and the newest one
    of a 70-turn thread (280 messages) is a handful of rows, not one per message."""
    from langgraph.checkpoint.memory import InMemorySaver

    def histories(saver: Any, config: RunnableConfig) -> list[list[tuple[str, str]]]:
        return [
            [(m.type, m.text) for m in t.checkpoint["channel_values"].get("messages", [])]
            for t in saver.list(config)
        ]

    memory = InMemorySaver()
    config = config_of(thread_id="long")
    with Store(database_url) as db:
        graph, reference = agent_graph(SessionkeeperSaver(db)), agent_graph(memory)
        for n in range(1, 71):
            graph.invoke(user_turn(n), config)
            reference.invoke(user_turn(n), config)
        fresh = SessionkeeperSaver(db)  # nothing remembered: every value read from the rows
        ours = histories(fresh, config)
        assert ours == histories(memory, config)
        assert len(ours[0]) == 280 and len(ours) == 70 * 5
        latest = fresh.get_tuple(config)
        assert latest is not None
        assert len(latest.checkpoint["channel_values"]["messages"]) == 280
    rows = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE x.type LIKE 'chunk+%%')"
        " FROM langgraph_checkpoints c,"
        " sk_langgraph_values_v2(c.thread_id, c.checkpoint_ns, c.versions) x"
        " WHERE c.thread_id = 'long' AND x.channel = 'messages'"
        " AND c.checkpoint_id = (SELECT max(checkpoint_id) FROM langgraph_checkpoints)"
    ).fetchone()
    # 280 = one chunk of 256, one of 16, then one row per put since (8 messages).
    assert rows == (10, 2)


def test_a_put_whose_line_moved_on_writes_nothing_and_names_that_channel(
    conn: psycopg.Connection[Any],
) -> None:
    """The function's guard, called directly with two list channels: one line is extended from
    a stale length, so neither line moves and no row is written (the saver then writes that
    channel to a new line); from the right lengths both lines are extended."""
    put = """
        SELECT channel, line_id FROM sk_langgraph_put(
            'moved', '', %(id)s, NULL, NULL, 'msgpack', '\\x00'::bytea, '{}'::jsonb, '{}'::jsonb,
            '{}'::text[], '{}'::text[], '{}'::text[], '{}'::bytea[],
            '{a,b}'::text[], %(versions)s::text[], %(lines)s::bigint[], %(from)s::integer[],
            %(to)s::integer[], %(item_lists)s::integer[], %(item_seqs)s::integer[],
            %(item_types)s::text[], %(item_data)s::bytea[])
    """

    def call(id: str, lines: list[int | None], from_: list[int], to: list[int]) -> list[Any]:
        items = [(k + 1, seq) for k in range(2) for seq in range(from_[k], to[k])]
        return conn.execute(
            put,
            {
                "id": id,
                "versions": [id, id],
                "lines": lines,
                "from": from_,
                "to": to,
                "item_lists": [k for k, _ in items],
                "item_seqs": [seq for _, seq in items],
                "item_types": ["str"] * len(items),
                "item_data": [b"x"] * len(items),
            },
        ).fetchall()

    def lengths() -> list[int]:
        rows = conn.execute("SELECT length FROM langgraph_lines ORDER BY line_id").fetchall()
        return [r[0] for r in rows]

    made = call("1", [None, None], [0, 0], [1, 1])
    line_a, line_b = (line for _, line in made)
    before = counts(conn)
    assert call("2", [line_a, line_b], [1, 2], [2, 3]) == [("b", None)]
    assert lengths() == [1, 1]
    assert counts(conn) == before
    assert call("3", [line_a, line_b], [1, 1], [2, 3]) == [("a", line_a), ("b", line_b)]
    assert lengths() == [2, 3]
    assert counts(conn)["langgraph_items"] == before["langgraph_items"] + 3
