"""The peer bots use: langchain-postgres's ``PostgresChatMessageHistory``, driven as a bot does.

Per message a bot reads the conversation (``history.messages``: every message of the session,
oldest first), keeps the last 40 for the prompt, and adds the user's message and the reply
(``add_messages``: one INSERT per message and a commit). The peer has no users, rate limits,
session expiry, trimming or usage records: the session id is derived from the chat user's id,
and its conversation only grows.

Needs the benchmark-only extra: ``pip install -e '.[bench]'``. Each worker has its own
connection (the class takes one), as the seed port's workers do.

``prepare`` gives every user the same 40-message history the other designs start from, and
``open`` restores exactly that before each measured cell: within a cell each conversation grows
by two messages a turn, as the peer's do. ``growth`` measures one turn's cost as the
conversation grows.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg

from . import workload
from .harness import median, percentile
from .hotpath import texts

TABLE = "chat_history"
PROMPT_MESSAGES = 2 * workload.HISTORY_PAIRS
_NAMESPACE = uuid.UUID("6f1c3a52-0000-4000-8000-73657373696f")

SEED = """
INSERT INTO chat_history (session_id, message)
SELECT s.session_id, m.message
FROM unnest(%(session_ids)s::uuid[]) AS s(session_id)
CROSS JOIN unnest(%(messages)s::jsonb[]) WITH ORDINALITY AS m(message, ord)
ORDER BY s.session_id, m.ord
"""


def available() -> bool:
    try:
        import langchain_postgres  # noqa: F401
    except ImportError:
        return False
    return True


def session_id(channel_user_id: str) -> str:
    """The bot's session for a chat user: the peer leaves mapping users to sessions to it."""
    return str(uuid.uuid5(_NAMESPACE, channel_user_id))


def _messages(pairs: list[dict[str, str]]) -> list[str]:
    from langchain_core.messages import AIMessage, HumanMessage, message_to_dict

    made = [
        HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"])
        for m in pairs
    ]
    return [json.dumps(message_to_dict(m)) for m in made]


def seed(conninfo: str, channel_user_ids: list[str], history: list[dict[str, str]]) -> None:
    """Empty the table, then give each user's session ``history``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")
        if history:
            conn.execute(
                SEED,
                {
                    "session_ids": [session_id(c) for c in channel_user_ids],
                    "messages": _messages(history),
                },
            )
        conn.execute(f"VACUUM ANALYZE {TABLE}")


class PeerDesign:
    name = "langchain-postgres"
    asynchronous = False

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.users: list[str] = []
        self._conns: list[psycopg.Connection[Any]] = []

    def prepare(self, users: list[str]) -> None:
        from langchain_postgres import PostgresChatMessageHistory

        self.users = users
        with psycopg.connect(self.conninfo) as conn:
            PostgresChatMessageHistory.create_tables(conn, TABLE)
        seed(self.conninfo, users, workload.history(workload.HISTORY_PAIRS))

    def open(self, conninfo: str, workers: int) -> None:
        if self.users:
            seed(self.conninfo, self.users, workload.history(workload.HISTORY_PAIRS))
        self._conns = [psycopg.connect(conninfo) for _ in range(workers)]

    def turn(self, worker: int, channel_user_id: str, seed_: int) -> None:
        user_text, reply = texts(seed_)
        read = bot_turn(self._conns[worker], channel_user_id, user_text, reply)
        assert read >= PROMPT_MESSAGES, f"the peer read {read} messages"

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns = []


def bot_turn(
    conn: psycopg.Connection[Any], channel_user_id: str, user_text: str, reply: str
) -> int:
    """What a bot does per message with the peer; returns the messages it read."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_postgres import PostgresChatMessageHistory

    history = PostgresChatMessageHistory(TABLE, session_id(channel_user_id), sync_connection=conn)
    conversation = history.messages
    prompt = conversation[-PROMPT_MESSAGES:]
    assert len(prompt) == min(len(conversation), PROMPT_MESSAGES)
    history.add_messages([HumanMessage(user_text), AIMessage(reply)])
    return len(conversation)


def growth(
    conninfo: str, lengths: list[int], turns: int, store_conninfo: str | None
) -> list[dict[str, Any]]:
    """One turn's latency and client CPU for a conversation of each length (single worker):
    the peer reads the whole conversation; this store reads its 40-message window whatever
    the session has seen (its sessions hold the full window; older messages were trimmed)."""
    results = []
    with psycopg.connect(conninfo) as conn:
        for length in lengths:
            users = workload.channel_user_ids(turns, prefix=f"p{length}-")
            seed(conninfo, users, workload.history(length // 2))
            results.append(
                _timed(
                    "langchain-postgres",
                    length,
                    turns,
                    users,
                    lambda u, i: bot_turn(conn, u, *texts(i)),
                )
            )
    if store_conninfo is not None:
        from store import Store

        from .this_store import USAGE, seed_users

        store = Store(store_conninfo, min_size=1, max_size=1, rate_per_minute=1_000_000_000)
        try:
            for length in lengths:
                users = workload.channel_user_ids(turns, prefix=f"s{length}-")
                sessions = seed_users(
                    store_conninfo, users, workload.history(workload.HISTORY_PAIRS)
                )
                with psycopg.connect(store_conninfo, autocommit=True) as c:
                    # The sessions have seen `length` messages; the trim kept the newest 40.
                    c.execute(
                        "UPDATE sessions SET next_seq = %s WHERE session_id = ANY(%s)",
                        (length, sessions),
                    )
                    c.execute(
                        "UPDATE session_messages SET seq = seq + %s WHERE session_id = ANY(%s)",
                        (length - PROMPT_MESSAGES, sessions),
                    )

                def store_turn(user: str, i: int) -> None:
                    turn = store.begin_turn(workload.CHANNEL, user)
                    assert len(turn.history) == PROMPT_MESSAGES
                    user_text, reply = texts(i)
                    store.finish_turn(turn, user_text, reply, **USAGE)

                results.append(_timed("store (sync)", length, turns, users, store_turn))
        finally:
            store.close()
    return results


def _timed(design: str, length: int, turns: int, users: list[str], turn: Any) -> dict[str, Any]:
    latencies = []
    cpu0 = time.process_time()
    for i, user in enumerate(users[:turns]):
        t0 = time.perf_counter()
        turn(user, i)
        latencies.append((time.perf_counter() - t0) * 1000)
    cpu = time.process_time() - cpu0
    return {
        "design": design,
        "conversation": length,
        "turns": turns,
        "p50_ms": median(latencies),
        "p99_ms": percentile(latencies, 99),
        "client_cpu_ms_per_op": cpu * 1000 / turns,
    }
