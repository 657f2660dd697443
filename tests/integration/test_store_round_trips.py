"""begin_turn and finish_turn each take one round trip: counted in libpq's own protocol trace.

libpq's trace (``PQtrace``) writes every protocol message the client sends and receives. Each
round trip of the extended query protocol ends with one ``Sync`` message from the client (a
simple query is one ``Query`` message), and each statement is one ``Execute``. A connection
subclass turns the trace on for every connection of the store's pool: real messages to a real
server, nothing mocked.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from typing import IO, Any, ClassVar

import psycopg
import pytest
from psycopg.pq import Trace
from psycopg.rows import DictRow
from store_support import T0

from store import AsyncStore, Store

_TRACE_FLAGS = Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE


def _trace(pgconn: Any, files: list[IO[str]]) -> None:
    trace_file = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read at the end of the test)
    pgconn.trace(trace_file.fileno())
    pgconn.set_trace_flags(_TRACE_FLAGS)
    files.append(trace_file)


class TracedConnection(psycopg.Connection[DictRow]):
    files: ClassVar[list[IO[str]]] = []

    def __init__(self, pgconn: Any, row_factory: Any = None) -> None:
        super().__init__(pgconn, row_factory)
        _trace(pgconn, self.files)


class AsyncTracedConnection(psycopg.AsyncConnection[DictRow]):
    files: ClassVar[list[IO[str]]] = []

    def __init__(self, pgconn: Any, row_factory: Any = None) -> None:
        super().__init__(pgconn, row_factory)
        _trace(pgconn, self.files)


def sent(files: list[IO[str]]) -> Counter[str]:
    """How many messages of each type the client sent on every traced connection so far."""
    counts: Counter[str] = Counter()
    for trace_file in files:
        trace_file.seek(0)
        for line in trace_file:
            parts = line.split("\t")
            if parts[0] == "F" and len(parts) >= 3:
                counts[parts[2].strip()] += 1
    return counts


def round_trips(counts: Counter[str]) -> int:
    return counts["Sync"] + counts["Query"]


@pytest.fixture(autouse=True)
def _fresh_traces() -> None:
    TracedConnection.files = []
    AsyncTracedConnection.files = []


@pytest.mark.parametrize("prepare_threshold", [None, 0, 5])
def test_each_turn_call_is_one_round_trip_and_one_statement(
    database_url: str, prepare_threshold: int | None
) -> None:
    files = TracedConnection.files
    deltas: list[Counter[str]] = []
    with Store(
        database_url,
        min_size=1,
        max_size=1,
        prepare_threshold=prepare_threshold,
        connection_class=TracedConnection,
    ) as store:
        store.get_or_create_user("telegram", "warm-up")  # the pool's one connection is open
        for i in range(8):
            before = sent(files)
            turn = store.begin_turn("telegram", "rt", now=T0)
            middle = sent(files)
            store.finish_turn(turn, f"q{i}", f"a{i}", input_tokens=1, now=T0)
            deltas += [middle - before, sent(files) - middle]
    assert len(files) == 1
    assert all(delta["Execute"] == 1 for delta in deltas)
    # psycopg prepares a statement once per connection, after prepare_threshold runs, in one
    # extra Parse-Sync exchange; from then on only Bind-Execute-Sync goes out.
    trips = [round_trips(delta) for delta in deltas]
    preparations = 0 if prepare_threshold is None else 2
    assert sorted(trips) == [1] * (len(trips) - preparations) + [2] * preparations
    if prepare_threshold is not None:
        assert all(delta["Parse"] == 0 for delta in deltas[-4:])


def test_a_group_turn_and_a_tool_using_exchange_are_one_round_trip_each(database_url: str) -> None:
    # Issue 23: the chat is one more parameter; the whole exchange (user message, a call, its
    # result, the reply) one statement and one transaction.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    exchange: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
        {"role": "assistant", "content": "done"},
    ]
    files = TracedConnection.files
    with Store(
        database_url,
        min_size=1,
        max_size=1,
        prepare_threshold=None,
        connection_class=TracedConnection,
    ) as store:
        store.get_or_create_user("telegram", "warm-up")
        before = sent(files)
        turn = store.begin_turn("telegram", "rt", chat=-100, now=T0)
        middle = sent(files)
        appended = store.finish_turn(turn, "q", exchange, now=T0)
        deltas = [middle - before, sent(files) - middle]
    assert appended.appended == 4
    assert [(round_trips(d), d["Execute"]) for d in deltas] == [(1, 1), (1, 1)]


def test_only_the_hot_path_statements_keep_a_cursor_per_connection(database_url: str) -> None:
    # A kept cursor keeps psycopg's adapters from call to call (a fifth of a turn's client CPU,
    # bench/RESULTS.md); other statements' results (the proactive list) must not stay held by
    # an idle connection.
    with Store(database_url, min_size=1, max_size=1) as store:
        turn = store.begin_turn("telegram", "kept")
        store.finish_turn(turn, "q", "a")
        store.load_users_from_db()
        with store.pool.connection() as conn:
            first = dict(conn.__dict__["_sessionkeeper_cursors"])
        turn = store.begin_turn("telegram", "kept")
        store.finish_turn(turn, "q2", "a2")
        with store.pool.connection() as conn:
            kept = conn.__dict__["_sessionkeeper_cursors"]
    assert set(kept) == {"begin_turn", "append_messages"}
    assert all(kept[name] is first[name] for name in kept)


def test_async_turn_calls_are_one_round_trip_each(database_url: str) -> None:
    files = AsyncTracedConnection.files

    async def scenario() -> list[int]:
        counts = []
        async with AsyncStore(
            database_url, min_size=1, max_size=1, connection_class=AsyncTracedConnection
        ) as store:
            await store.get_or_create_user("telegram", "warm-up")
            before = sent(files)
            turn = await store.begin_turn("telegram", "rt")
            middle = sent(files)
            await store.finish_turn(turn, "q", "a")
            counts = [round_trips(middle - before), round_trips(sent(files) - middle)]
        return counts

    assert asyncio.run(scenario()) == [1, 1]


def test_the_seed_sequence_takes_more_round_trips(database_url: str) -> None:
    # The comparison the hot path is for: the seed's calls, one per step, on the same counter.
    files = TracedConnection.files
    with Store(database_url, min_size=1, max_size=1, connection_class=TracedConnection) as store:
        store.get_or_create_user("telegram", "warm-up")
        before = sent(files)
        user = store.get_or_create_user("telegram", "seed")
        store.check_rate_limit(user.user_id)
        session = store.get_or_create_session(user.user_id)
        store.get_history(session.session_id)
        store.append_messages(
            session.session_id,
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        )
        store.trim_session_history(session.session_id)
        store.track_usage(user.user_id, "telegram", 1, 1)
        assert round_trips(sent(files) - before) == 7
