"""The LangGraph checkpointer (store/integrations/langgraph.py) against the reference
``PostgresSaver`` (langgraph-checkpoint-postgres), on the same server, one instance of each as
a bot deploys it (a saver over a connection pool of ``workers`` connections).

The graph is the agent graph of tests/integration/langgraph_support.py: one tool call per turn,
four messages a turn. For each saver, history (10 or 100 turns) and worker count:

* end-to-end turns/s through LangGraph: each worker runs turns on its own thread, which
  already holds ``history`` turns;
* ``put`` calls/s for the saver alone: the ``put`` calls LangGraph made for one turn at that
  history, recorded, replayed by every worker on copies of the thread (untimed copy and read
  first, as LangGraph reads a thread before a turn; the reference on fresh threads, which is
  the same to it), as fast as it can; p99 of ``put``; WAL per ``put`` (every ``put`` is
  committed durably). The copies are made before the timed replay. The replay is a bot's
  next turn: LangGraph's ``add_messages`` builds each list from the very objects
  ``get_tuple`` returned, so each copy's calls carry, at the head of each list channel, the
  objects its read returned (checked equal in value to the recorded ones), not the recorded
  objects (which our saver would have to encode to compare). The reference's calls are
  replayed as recorded: it encodes every value whatever it is given;
* p99 of ``get_tuple`` (latest) and ``list`` (limit 10) on the threads;
* table bytes (``pg_total_relation_size`` of the saver's tables) after the prefill.

The async pair (``AsyncSessionkeeperSaver`` on an ``AsyncStore`` against ``AsyncPostgresSaver``
on an ``AsyncConnectionPool``) is measured the same way with ``workers`` tasks on one event
loop. LangGraph's own cost bounds any saver: the same turns run with ``InMemorySaver``.

``retention``: table bytes after 10,000 steps (checkpoints) of the agent graph, 100 threads of
20 turns, with every checkpoint kept and with the newest 20 of each thread kept (the
``checkpoint_retention`` job here; the same deletion in SQL for the reference, which has no
such job), after a plain ``VACUUM`` (what autovacuum leaves reusable) and as live row bytes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

SK_TABLES = (
    "langgraph_threads",
    "langgraph_checkpoints",
    "langgraph_blobs",
    "langgraph_lines",
    "langgraph_items",
    "langgraph_writes",
)
REFERENCE_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def available() -> bool:
    try:
        import langgraph.checkpoint.postgres  # noqa: F401

        import store.integrations.langgraph  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Saver:
    name: str
    conninfo: str
    tables: tuple[str, ...]
    make: Callable[[int], tuple[Any, Callable[[], Any]]]  # workers -> (saver, close)
    is_async: bool = False


def savers(create_database: Callable[[str], str]) -> list[Saver]:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from sessionkeeper.admin import migrate
    from store import AsyncStore, Store
    from store.integrations.langgraph import AsyncSessionkeeperSaver, SessionkeeperSaver

    ours = create_database("skbench_lg_store")
    migrate.upgrade(ours)
    reference = create_database("skbench_lg_reference")
    with psycopg.connect(reference, autocommit=True, row_factory=dict_row) as conn:
        PostgresSaver(conn).setup()
    options = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}

    def make_ours(workers: int) -> tuple[Any, Callable[[], None]]:
        db = Store(ours, min_size=workers, max_size=workers)
        return SessionkeeperSaver(db), db.close

    def make_reference(workers: int) -> tuple[Any, Callable[[], None]]:
        pool: ConnectionPool[Any] = ConnectionPool(
            reference, min_size=workers, max_size=workers, kwargs=options
        )
        return PostgresSaver(pool), pool.close

    def make_ours_async(workers: int) -> tuple[Any, Callable[[], Any]]:
        db = AsyncStore(ours, min_size=workers, max_size=workers)
        return AsyncSessionkeeperSaver(db), db.close

    def make_reference_async(workers: int) -> tuple[Any, Callable[[], Any]]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            reference, min_size=workers, max_size=workers, kwargs=options, open=False
        )
        return AsyncPostgresSaver(pool), pool.close

    def make_memory(workers: int) -> tuple[Any, Callable[[], None]]:
        return InMemorySaver(), lambda: None

    return [
        Saver("sessionkeeper", ours, SK_TABLES, make_ours),
        Saver("PostgresSaver", reference, REFERENCE_TABLES, make_reference),
        Saver("InMemorySaver", "", (), make_memory),
        Saver("sessionkeeper async", ours, SK_TABLES, make_ours_async, is_async=True),
        Saver("AsyncPostgresSaver", reference, REFERENCE_TABLES, make_reference_async, True),
    ]


def _p99(samples: list[float]) -> float | None:
    if len(samples) < 2:
        return None
    return statistics.quantiles(samples, n=100)[98] * 1000


def _parallel(workers: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` on ``workers`` threads; the wall time."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def as_read(calls: list[tuple[Any, ...]], read: Any) -> list[tuple[Any, ...]]:
    """The recorded ``put`` calls as a bot makes them after ``read`` (a ``CheckpointTuple`` of
    the thread as it was before the recorded turn): each list channel starts with the objects
    the read returned, as LangGraph's ``add_messages`` builds the next list from them. Fails
    if the read does not hold, in value, the items the recorded lists start with."""
    assert read is not None, "the copy of the thread reads back empty"
    known = {
        channel: value
        for channel, value in read.checkpoint["channel_values"].items()
        if type(value) is list
    }
    replayed = []
    for config, checkpoint, metadata, versions in calls:
        values = dict(checkpoint["channel_values"])
        for channel, items in known.items():
            value = values.get(channel)
            if type(value) is not list:
                continue
            if len(value) < len(items) or value[: len(items)] != items:
                raise RuntimeError(
                    f"the recorded {channel!r} does not start with the {len(items)} items"
                    " get_tuple read back: the replay would not be a bot's next turn"
                )
            values[channel] = [*items, *value[len(items) :]]
        replayed.append((config, {**checkpoint, "channel_values": values}, metadata, versions))
    return replayed


def measure(saver: Saver, history: int, workers: int, turns: int, replays: int) -> dict[str, Any]:
    if saver.is_async:
        return asyncio.run(measure_async(saver, history, workers, turns, replays))
    from langgraph_support import agent_graph, user_turn

    if saver.conninfo:
        with psycopg.connect(saver.conninfo, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(saver.tables)} CASCADE")
    instance, close = saver.make(workers)
    record: dict[str, Any] = {"saver": saver.name, "history": history, "workers": workers}
    try:
        graph = agent_graph(instance)
        run = uuid.uuid4().hex[:8]
        configs: list[RunnableConfig] = [
            {"configurable": {"thread_id": f"{run}-{i}"}} for i in range(workers)
        ]

        def prefill(i: int) -> None:
            for n in range(1, history + 1):
                graph.invoke(user_turn(n), configs[i])

        record["prefill_s"] = _parallel(workers, prefill)
        if saver.conninfo:
            record["table_bytes"] = table_bytes(saver)

        def e2e(i: int) -> None:
            for n in range(history + 1, history + 1 + turns):
                graph.invoke(user_turn(n), configs[i])

        record["turns_per_s"] = workers * turns / _parallel(workers, e2e)
        if not saver.conninfo:
            return record

        # The put calls of one more turn on worker 0's thread, recorded; the thread as it was
        # before that turn is kept (copied) to replay on.
        snapshot = f"{run}-snapshot"
        copies = saver.name == "sessionkeeper"
        if copies:
            instance.copy_thread(configs[0]["configurable"]["thread_id"], snapshot)
        calls: list[tuple[Any, ...]] = []
        original = instance.put

        def recording_put(*args: Any) -> Any:
            calls.append(args)
            return original(*args)

        instance.put = recording_put
        graph.invoke(user_turn(history + turns + 1), configs[0])
        instance.put = original
        # Each replay runs on a copy of worker i's thread as it was before the recorded turn,
        # read first (untimed) as LangGraph reads a thread before a turn, with its calls built
        # on the objects the read returned (as_read): the steady state of a bot. The reference
        # saver cannot copy a thread and never reads before a put: a fresh thread is the same
        # to it.
        put_times: list[list[float]] = [[] for _ in range(workers)]

        threads = [[f"replay-{uuid.uuid4().hex}" for _ in range(replays)] for _ in configs]
        replayed = {thread: calls for ts in threads for thread in ts}
        if copies:
            for thread in replayed:
                instance.copy_thread(snapshot, thread)
                read = instance.get_tuple(
                    {"configurable": {**calls[0][0]["configurable"], "thread_id": thread}}
                )
                replayed[thread] = as_read(calls, read)

        def replay(i: int) -> None:
            for thread in threads[i]:
                for config, checkpoint, metadata, versions in replayed[thread]:
                    conf = {**config["configurable"], "thread_id": thread}
                    t0 = time.perf_counter()
                    instance.put({"configurable": conf}, checkpoint, metadata, versions)
                    put_times[i].append(time.perf_counter() - t0)

        with psycopg.connect(saver.conninfo, autocommit=True) as conn:
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
            wall = _parallel(workers, replay)
            wal = conn.execute(
                "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (lsn,)
            ).fetchone()[0]  # type: ignore[index]
        puts = [t for ts in put_times for t in ts]
        record["puts_per_checkpoint_turn"] = len(calls)
        record["put_per_s"] = len(puts) / wall
        record["put_p99_ms"] = _p99(puts)
        record["wal_bytes_per_put"] = float(wal) / len(puts)

        get_times: list[float] = []
        list_times: list[float] = []
        for _ in range(max(20, replays)):
            for config in configs:
                t0 = time.perf_counter()
                instance.get_tuple(config)
                get_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                list(instance.list(config, limit=10))
                list_times.append(time.perf_counter() - t0)
        record["get_tuple_p99_ms"] = _p99(get_times)
        record["list_p99_ms"] = _p99(list_times)
    finally:
        close()
    return record


async def _gather(workers: int, work: Callable[[int], Any]) -> float:
    """Run ``work(i)`` as ``workers`` tasks; the wall time."""
    t0 = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(workers)))
    return time.perf_counter() - t0


async def measure_async(
    saver: Saver, history: int, workers: int, turns: int, replays: int
) -> dict[str, Any]:
    """``measure`` for an async saver: ``workers`` tasks on one event loop, ``ainvoke``."""
    from langgraph_support import agent_graph, user_turn

    with psycopg.connect(saver.conninfo, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(saver.tables)} CASCADE")
    instance, close = saver.make(workers)
    if hasattr(instance, "conn") and hasattr(instance.conn, "open"):
        await instance.conn.open()  # AsyncPostgresSaver's pool
    record: dict[str, Any] = {"saver": saver.name, "history": history, "workers": workers}
    try:
        graph = agent_graph(instance)
        run = uuid.uuid4().hex[:8]
        configs: list[RunnableConfig] = [
            {"configurable": {"thread_id": f"{run}-{i}"}} for i in range(workers)
        ]

        async def prefill(i: int) -> None:
            for n in range(1, history + 1):
                await graph.ainvoke(user_turn(n), configs[i])

        record["prefill_s"] = await _gather(workers, prefill)
        record["table_bytes"] = table_bytes(saver)

        async def e2e(i: int) -> None:
            for n in range(history + 1, history + 1 + turns):
                await graph.ainvoke(user_turn(n), configs[i])

        record["turns_per_s"] = workers * turns / await _gather(workers, e2e)
        snapshot = f"{run}-snapshot"
        copies = saver.name.startswith("sessionkeeper")
        if copies:
            await instance.acopy_thread(configs[0]["configurable"]["thread_id"], snapshot)
        calls: list[tuple[Any, ...]] = []
        original = instance.aput

        async def recording_put(*args: Any) -> Any:
            calls.append(args)
            return await original(*args)

        instance.aput = recording_put
        await graph.ainvoke(user_turn(history + turns + 1), configs[0])
        instance.aput = original
        threads = [[f"replay-{uuid.uuid4().hex}" for _ in range(replays)] for _ in configs]
        replayed = {thread: calls for ts in threads for thread in ts}
        if copies:
            for thread in replayed:
                await instance.acopy_thread(snapshot, thread)
                conf = {**calls[0][0]["configurable"], "thread_id": thread}
                replayed[thread] = as_read(calls, await instance.aget_tuple({"configurable": conf}))
        put_times: list[float] = []

        async def replay(i: int) -> None:
            for thread in threads[i]:
                for config, checkpoint, metadata, versions in replayed[thread]:
                    conf = {**config["configurable"], "thread_id": thread}
                    t0 = time.perf_counter()
                    await instance.aput({"configurable": conf}, checkpoint, metadata, versions)
                    put_times.append(time.perf_counter() - t0)

        with psycopg.connect(saver.conninfo, autocommit=True) as conn:
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
            wall = await _gather(workers, replay)
            wal = conn.execute(
                "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (lsn,)
            ).fetchone()[0]  # type: ignore[index]
        record["puts_per_checkpoint_turn"] = len(calls)
        record["put_per_s"] = len(put_times) / wall
        record["put_p99_ms"] = _p99(put_times)
        record["wal_bytes_per_put"] = float(wal) / len(put_times)
        get_times: list[float] = []
        list_times: list[float] = []
        for _ in range(max(20, replays)):
            for config in configs:
                t0 = time.perf_counter()
                await instance.aget_tuple(config)
                get_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _ = [t async for t in instance.alist(config, limit=10)]
                list_times.append(time.perf_counter() - t0)
        record["get_tuple_p99_ms"] = _p99(get_times)
        record["list_p99_ms"] = _p99(list_times)
    finally:
        await close()
    return record


RETENTION_THREADS = 100
RETENTION_TURNS = 20  # five checkpoints a turn: 10,000 steps in all
RETENTION_KEEP = 20
REFERENCE_TRIM = """
DELETE FROM checkpoints c
WHERE c.checkpoint_id < (SELECT x.checkpoint_id FROM checkpoints x
                         WHERE x.thread_id = c.thread_id AND x.checkpoint_ns = c.checkpoint_ns
                         ORDER BY x.checkpoint_id DESC OFFSET %(keep)s - 1 LIMIT 1);
DELETE FROM checkpoint_writes w WHERE NOT EXISTS (
    SELECT FROM checkpoints c WHERE c.thread_id = w.thread_id
    AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id);
DELETE FROM checkpoint_blobs b WHERE NOT EXISTS (
    SELECT FROM checkpoints c WHERE c.thread_id = b.thread_id
    AND c.checkpoint_ns = b.checkpoint_ns
    AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
"""


def retention(saver: Saver, keep: bool, workers: int = 4) -> dict[str, Any]:
    """Table bytes after 10,000 steps on ``RETENTION_THREADS`` threads (a turn on each in turn),
    every checkpoint kept (``keep``) or the newest ``RETENTION_KEEP`` of each thread, trimmed
    and vacuumed after every round of turns."""
    from datetime import UTC, datetime

    from langgraph_support import agent_graph, user_turn

    from sessionkeeper.jobs import checkpoint_retention

    with psycopg.connect(saver.conninfo, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(saver.tables)} CASCADE")
    instance, close = saver.make(workers)
    steps = 0
    try:
        graph = agent_graph(instance)
        ours = saver.name.startswith("sessionkeeper")
        settings = checkpoint_retention.Settings(keep_latest=RETENTION_KEEP)

        def trim() -> None:
            with psycopg.connect(saver.conninfo, autocommit=True) as conn:
                if ours:
                    checkpoint_retention.run(conn, settings, datetime.now(UTC))
                else:
                    conn.execute(REFERENCE_TRIM.replace("%(keep)s", str(RETENTION_KEEP)))
                conn.execute(f"VACUUM {', '.join(saver.tables)}")  # as autovacuum would

        for n in range(1, RETENTION_TURNS + 1):

            def work(i: int, n: int = n) -> None:
                for t in range(i, RETENTION_THREADS, workers):
                    config: RunnableConfig = {"configurable": {"thread_id": f"retention-{t}"}}
                    graph.invoke(user_turn(n), config)

            _parallel(workers, work)
            if not keep:
                trim()
        with psycopg.connect(saver.conninfo, autocommit=True) as conn:
            table = "langgraph_checkpoints" if ours else "checkpoints"
            count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            steps = conn.execute(count).fetchone()[0]  # type: ignore[index]
            conn.execute(f"VACUUM {', '.join(saver.tables)}")
            sizes = sql.SQL(" + ").join(
                sql.SQL("(SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {} t)").format(
                    sql.Identifier(t)
                )
                for t in saver.tables
            )
            live = conn.execute(sql.SQL("SELECT ") + sizes).fetchone()[0]  # type: ignore[index]
    finally:
        close()
    return {
        "saver": saver.name,
        "retention": f"newest {RETENTION_KEEP} kept" if not keep else "off",
        "checkpoints_left": steps,
        "table_bytes": table_bytes(saver),
        "row_bytes": int(live),
    }


RETENTION_COLUMNS = (
    ("saver", "saver"),
    ("retention", "retention"),
    ("checkpoints_left", "checkpoints left"),
    ("table_bytes", "table bytes (after VACUUM)"),
    ("row_bytes", "live row bytes"),
)


def table_bytes(saver: Saver) -> int:
    """The saver's tables with their indexes and TOAST, in bytes."""
    with psycopg.connect(saver.conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(%s::text[]) t",
            (list(saver.tables),),
        ).fetchone()
    assert row is not None
    return int(row[0])


COLUMNS = (
    ("saver", "saver"),
    ("history", "history"),
    ("workers", "workers"),
    ("turns_per_s", "turns/s"),
    ("put_per_s", "put/s (replay)"),
    ("put_p99_ms", "put p99 ms"),
    ("get_tuple_p99_ms", "get_tuple p99 ms"),
    ("list_p99_ms", "list p99 ms"),
    ("wal_bytes_per_put", "WAL B/put"),
    ("table_bytes", "table bytes after the history"),
)
