"""checkpoint_retention on threads a real LangGraph graph wrote: idle threads go, histories are
trimmed to the newest checkpoints, a pending interrupt survives, and a stopped run resumes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command
from langgraph_support import agent_graph, user_turn

from sessionkeeper.jobs import JOB_NAMES, checkpoint_retention
from sessionkeeper.jobs.sql import QUERIES
from store import Store
from store.integrations.langgraph import SessionkeeperSaver

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
SETTINGS = checkpoint_retention.Settings(batch_size=1, keep_latest=2, idle_seconds=30 * 86400)


def config(thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread}}


def checkpoints(conn: psycopg.Connection[Any], thread: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM langgraph_checkpoints WHERE thread_id = %s", (thread,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def orphans(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Values no checkpoint references, and lines no value references."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM langgraph_blobs b WHERE NOT EXISTS ("
        "          SELECT FROM langgraph_checkpoints c WHERE c.thread_id = b.thread_id"
        "          AND c.checkpoint_ns = b.checkpoint_ns"
        "          AND c.versions ->> b.channel = b.version)),"
        "       (SELECT count(*) FROM langgraph_lines l WHERE NOT EXISTS ("
        "          SELECT FROM langgraph_blobs b WHERE b.line_id = l.line_id))"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def world(db: Store, conn: psycopg.Connection[Any]) -> None:
    graph = agent_graph(SessionkeeperSaver(db))
    for n in range(1, 4):
        graph.invoke(user_turn(n), config("old"))
    for n in range(1, 6):
        graph.invoke(user_turn(n), config("busy"))
    agent_graph(SessionkeeperSaver(db), approval=True).invoke(user_turn(1), config("waiting"))
    conn.execute(
        "UPDATE langgraph_threads SET updated_at = %s WHERE thread_id IN ('old', 'waiting')",
        (NOW - 40 * DAY,),
    )


def test_idle_threads_go_histories_are_trimmed_and_interrupts_survive(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    assert "checkpoint_retention" in JOB_NAMES
    with Store(database_url) as db:
        world(db, conn)
        assert checkpoints(conn, "busy") > 2 and orphans(conn) == (0, 0)
        # The daemon's gauges: "old" is overdue (for 10 days); "waiting" is kept, not counted.
        params = {"now": NOW, "checkpoint_idle_seconds": SETTINGS.idle_seconds}
        expired, age = conn.execute(QUERIES["checkpoint_gauges"], params).fetchone()  # type: ignore[misc]
        assert expired == 1 and 10 * 86400 - 60 < age < 10 * 86400 + 60

        result = checkpoint_retention.run(conn, SETTINGS, NOW)

        assert checkpoints(conn, "old") == 0
        assert checkpoints(conn, "busy") == 2
        assert checkpoints(conn, "waiting") == 2
        assert result.details["idle_threads"] == 1
        assert result.details["checkpoints"] > 0 and result.details["values"] > 0
        assert orphans(conn) == (0, 0)
        # What is left is whole: the trimmed thread goes on, the interrupted one resumes.
        saver = SessionkeeperSaver(db)
        busy = agent_graph(saver).invoke(user_turn(6), config("busy"))
        assert len(busy["messages"]) == 24
        resumed = agent_graph(saver, approval=True).invoke(
            Command(resume="approved"), config("waiting")
        )
        assert [m.type for m in resumed["messages"]] == ["human", "ai", "tool", "ai"]


def test_a_stopped_run_commits_its_batches_and_the_next_run_finishes(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as db:
        world(db, conn)
    stops = iter([True])
    first = checkpoint_retention.run(
        conn,
        checkpoint_retention.Settings(batch_size=1, keep_latest=2),
        NOW,
        pause=lambda _: next(stops, False),
    )
    assert first.stopped
    # One thread (of three, one per batch) was trimmed and committed before the stop.
    trimmed = [t for t in ("busy", "old", "waiting") if checkpoints(conn, t) == 2]
    assert len(trimmed) == 1
    second = checkpoint_retention.run(
        conn, checkpoint_retention.Settings(batch_size=1, keep_latest=2), NOW
    )
    assert not second.stopped
    assert [checkpoints(conn, t) for t in ("busy", "old", "waiting")] == [2, 2, 2]
    assert orphans(conn) == (0, 0)
