"""This project's store as the benchmarks drive it: ``store.Store`` and ``store.AsyncStore``.

A turn is ``begin_turn`` (user, rate decision, session, history) then ``finish_turn`` (append
the pair, trim, usage), with the store's own defaults except the pool size (one connection per
worker, as the seed port has) and the per-minute cap, raised out of reach (see hotpath.py).

Histories are seeded with plain SQL on the store's schema (store/schema.py): the same messages
the seed port's sessions hold, one row each.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg

from sessionkeeper.admin import migrate

from . import workload
from .growth import full_history
from .hotpath import UNLIMITED, texts

T = TypeVar("T")

USAGE: dict[str, Any] = {"input_tokens": 1200, "output_tokens": 300, "cached_tokens": 800}

SEED_USERS = """
-- With the ids begin_turn gives new users (sk_user_key): the hot path's lookup by key.
INSERT INTO users (user_id, channel, channel_user_id, authenticated)
SELECT sk_user_key(%(channel)s, cid), %(channel)s, cid, true FROM unnest(%(ids)s::text[]) AS cid
RETURNING user_id, channel_user_id
"""

SEED_SESSIONS = """
INSERT INTO sessions (user_id, next_seq, chat_id)
SELECT user_id, %(messages)s, %(chat_id)s FROM unnest(%(user_ids)s::uuid[]) AS user_id
RETURNING session_id, user_id
"""

# The users of existing channel ids (seed_sessions for users seeded already).
FIND_USERS = """
SELECT sk_user_key(%(channel)s, cid), cid FROM unnest(%(ids)s::text[]) AS cid
"""

# The chat of the bench's group turns: each user's conversation in one group (one per member).
GROUP_CHAT = "-1001"

SEED_MESSAGES = """
INSERT INTO session_messages (user_id, session_id, seq, role, content)
SELECT s.user_id, s.session_id, m.seq - 1, m.role, m.content
FROM unnest(%(session_ids)s::uuid[], %(user_ids)s::uuid[]) AS s(session_id, user_id)
CROSS JOIN unnest(%(roles)s::text[], %(contents)s::text[]) WITH ORDINALITY AS m(role, content, seq)
"""


def install(conninfo: str) -> None:
    migrate.upgrade(conninfo)


def seed_users(
    conninfo: str,
    channel_user_ids: list[str],
    history: list[dict[str, str]],
    *,
    chat_id: str | None = None,
    existing: bool = False,
) -> list[Any]:
    """Users, each with one active session holding ``history`` (in chat ``chat_id``; None: the
    private chat); returns the session ids in the order of ``channel_user_ids``. ``existing``:
    the users were seeded already, only the sessions are added."""
    with psycopg.connect(conninfo) as conn:
        query = FIND_USERS if existing else SEED_USERS
        users = dict(
            (cid, uid)
            for uid, cid in conn.execute(
                query, {"channel": workload.CHANNEL, "ids": channel_user_ids}
            ).fetchall()
        )
        ordered = [users[cid] for cid in channel_user_ids]
        sessions = dict(
            (uid, sid)
            for sid, uid in conn.execute(
                SEED_SESSIONS,
                {"messages": len(history), "user_ids": ordered, "chat_id": chat_id},
            ).fetchall()
        )
        session_ids = [sessions[uid] for uid in ordered]
        if history:
            conn.execute(
                SEED_MESSAGES,
                {
                    "session_ids": session_ids,
                    "user_ids": ordered,
                    "roles": [m["role"] for m in history],
                    "contents": [m["content"] for m in history],
                },
            )
    return session_ids


def _options(workers: int) -> dict[str, Any]:
    return {"min_size": workers, "max_size": workers, "rate_per_minute": UNLIMITED}


class StoreDesign:
    name = "store (sync)"
    asynchronous = False

    def __init__(self, conninfo: str, history_pairs: int = workload.HISTORY_PAIRS) -> None:
        self.conninfo = conninfo
        self.store: Any = None
        # The pairs a turn reads and the store trims to: each history stays this long.
        self.history_pairs = history_pairs

    def prepare(self, users: list[str]) -> None:
        install(self.conninfo)
        seed_users(self.conninfo, users, workload.history(workload.HISTORY_PAIRS))

    def open(self, conninfo: str, workers: int) -> None:
        from store import Store

        self.store = Store(conninfo, **_options(workers), history_pairs=self.history_pairs)

    def turn(self, worker: int, channel_user_id: str, seed: int) -> None:
        user_text, reply = texts(seed)
        turn = self.store.begin_turn(workload.CHANNEL, channel_user_id)
        assert len(turn.history) == self.history_pairs * 2, len(turn.history)
        self.store.finish_turn(turn, user_text, reply, **USAGE)

    def close(self) -> None:
        self.store.close()


class AsyncStoreDesign:
    """The asyncio store on the sync design's database (``prepare`` does nothing)."""

    name = "store (async)"
    asynchronous = True

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.store: Any = None

    def prepare(self, users: list[str]) -> None:
        pass

    async def open(self, conninfo: str, workers: int) -> None:
        from store import AsyncStore

        self.store = AsyncStore(conninfo, **_options(workers))
        await self.store.open()

    async def turn(self, worker: int, channel_user_id: str, seed: int) -> None:
        user_text, reply = texts(seed)
        turn = await self.store.begin_turn(workload.CHANNEL, channel_user_id)
        assert len(turn.history) == workload.HISTORY_PAIRS * 2, len(turn.history)
        await self.store.finish_turn(turn, user_text, reply, **USAGE)

    async def close(self) -> None:
        await self.store.close()


class GroupStoreDesign(StoreDesign):
    """A turn in a group chat (each member's own conversation there, the default), on the sync
    design's database: its users get a group session with a full history beside their private
    one. Issue 23: within 10 % of a private turn."""

    name = "store (sync, group)"

    def prepare(self, users: list[str]) -> None:
        seed_users(
            self.conninfo,
            users,
            workload.history(workload.HISTORY_PAIRS),
            chat_id=GROUP_CHAT,
            existing=True,
        )

    def turn(self, worker: int, channel_user_id: str, seed: int) -> None:
        user_text, reply = texts(seed)
        turn = self.store.begin_turn(workload.CHANNEL, channel_user_id, chat=GROUP_CHAT)
        assert len(turn.history) == workload.HISTORY_PAIRS * 2, len(turn.history)
        self.store.finish_turn(turn, user_text, reply, **USAGE)


# A tool-call turn's exchange after the user's message: one call, its result, the reply.
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


class ToolStoreDesign(StoreDesign):
    """A turn that used a tool (one call, one result, one reply: four messages in one
    finish_turn), on a database of its own: its histories hold tool results, so its windows
    may start one message later (a result whose call was cut off is left out)."""

    name = "store (sync, tools)"

    def turn(self, worker: int, channel_user_id: str, seed: int) -> None:
        user_text, reply = texts(seed)
        turn = self.store.begin_turn(workload.CHANNEL, channel_user_id)
        assert len(turn.history) >= workload.HISTORY_PAIRS * 2 - 2, len(turn.history)
        exchange = [
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": reply},
            {"role": "assistant", "content": reply},
        ]
        self.store.finish_turn(turn, user_text, exchange, **USAGE)


class UvloopStoreDesign(AsyncStoreDesign):
    """The asyncio store on uvloop's event loop (the ``uvloop`` extra), on the same database."""

    name = "store (async, uvloop)"

    @staticmethod
    def run(main: Coroutine[Any, Any, T]) -> T:
        import uvloop

        return uvloop.run(main)


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class StoreGrowth:
    """``Store.append_messages``: one INSERT per message, whatever the history holds."""

    name = "store (sync)"

    def __init__(self, conninfo: str) -> None:
        from store import Store

        self.conninfo = conninfo
        install(conninfo)
        self.store = Store(conninfo, min_size=1, max_size=1)

    def prepare(self, sessions: int) -> tuple[list[Any], list[Any]]:
        users = workload.channel_user_ids(2 * sessions, prefix="g")
        empty = seed_users(self.conninfo, users[:sessions], [])
        full = seed_users(self.conninfo, users[sessions:], full_history())
        return empty, full

    def append(self, session_id: Any, messages: list[dict[str, str]]) -> None:
        self.store.append_messages(session_id, messages)

    def close(self) -> None:
        self.store.close()


def available() -> bool:
    try:
        from store import AsyncStore, Store  # noqa: F401
    except ImportError:
        return False
    return True
