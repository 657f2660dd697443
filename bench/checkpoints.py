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
  committed durably). The copies are made before the timed replay;
* p99 of ``get_tuple`` (latest) and ``list`` (limit 10) on the threads;
* table bytes (``pg_total_relation_size`` of the saver's tables) after the prefill.

LangGraph's own cost bounds any saver: the same turns run with ``InMemorySaver``.
"""

from __future__ import annotations

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
    make: Callable[[int], tuple[Any, Callable[[], None]]]  # workers -> (saver, close)


def savers(create_database: Callable[[str], str]) -> list[Saver]:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from sessionkeeper.admin import migrate
    from store import Store
    from store.integrations.langgraph import SessionkeeperSaver

    ours = create_database("skbench_lg_store")
    migrate.upgrade(ours)
    reference = create_database("skbench_lg_reference")
    with psycopg.connect(reference, autocommit=True, row_factory=dict_row) as conn:
        PostgresSaver(conn).setup()

    def make_ours(workers: int) -> tuple[Any, Callable[[], None]]:
        db = Store(ours, min_size=workers, max_size=workers)
        return SessionkeeperSaver(db), db.close

    def make_reference(workers: int) -> tuple[Any, Callable[[], None]]:
        pool: ConnectionPool[Any] = ConnectionPool(
            reference,
            min_size=workers,
            max_size=workers,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        return PostgresSaver(pool), pool.close

    def make_memory(workers: int) -> tuple[Any, Callable[[], None]]:
        return InMemorySaver(), lambda: None

    return [
        Saver("sessionkeeper", ours, SK_TABLES, make_ours),
        Saver("PostgresSaver", reference, REFERENCE_TABLES, make_reference),
        Saver("InMemorySaver", "", (), make_memory),
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


def measure(saver: Saver, history: int, workers: int, turns: int, replays: int) -> dict[str, Any]:
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
        # read first (untimed) as LangGraph reads a thread before a turn: the steady state of a
        # bot. The reference saver cannot copy a thread and never reads before a put: a fresh
        # thread is the same to it.
        put_times: list[list[float]] = [[] for _ in range(workers)]

        threads = [[f"replay-{uuid.uuid4().hex}" for _ in range(replays)] for _ in configs]
        if copies:
            for thread in (t for ts in threads for t in ts):
                instance.copy_thread(snapshot, thread)
                instance.get_tuple(
                    {"configurable": {**calls[0][0]["configurable"], "thread_id": thread}}
                )

        def replay(i: int) -> None:
            for thread in threads[i]:
                for config, checkpoint, metadata, versions in calls:
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
