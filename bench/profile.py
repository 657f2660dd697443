"""Where one turn's time goes: each step of both designs timed alone, one connection, no load.

Each step runs ``repeat`` times after a warm-up (psycopg prepares statements on their fifth
use) and its median latency is reported. The store's steps are timed through its public calls
and, to split ``begin_turn`` into its parts, by calling its server-side functions directly
(``sk_*``, migrations/versions/0002_store_functions.py): those rows are diagnostics and say
"n/a" if the functions change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from . import seed_port, this_store, workload
from .harness import median
from .hotpath import UNLIMITED, texts

WARMUP = 20

# (label, SQL, whether it needs a session id (else a user id)); $1 is filled in below.
STORE_PARTS = (
    ("a round trip (SELECT 1)", "SELECT 1", None),
    ("durable commit of a one-row INSERT", "INSERT INTO profile_commit VALUES (1)", None),
    (
        "sk_check_rate_limit, synchronous_commit off (store default)",
        "SELECT * FROM sk_check_rate_limit(%s, now(), '{60}', '{1000000000}', false)",
        "user",
    ),
    (
        "sk_check_rate_limit, durable",
        "SELECT * FROM sk_check_rate_limit(%s, now(), '{60}', '{1000000000}', true)",
        "user",
    ),
    (
        "sk_current_session (locks the user row, finds the session)",
        "SELECT * FROM sk_current_session(%s, now(), interval '30 minutes', 2)",
        "user",
    ),
    (
        "sk_history: 40 messages as one JSONB array (begin_turn before revision 0005)",
        "SELECT sk_history(%s, 20)",
        "session",
    ),
    (
        "sk_history_arrays: 40 messages as parallel arrays (begin_turn since 0005)",
        "SELECT * FROM sk_history_arrays(%s, 20)",
        "session",
    ),
    (
        "the same 40 messages as plain rows",
        "SELECT seq, role, content, created_at FROM session_messages"
        " WHERE session_id = %s ORDER BY seq DESC LIMIT 40",
        "session",
    ),
)


def _statement(
    conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None
) -> Callable[[int], object]:
    def step(_i: int) -> object:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else None

    return step


def _timed(step: Callable[[int], object], repeat: int) -> float:
    for i in range(WARMUP):
        step(i)
    latencies = []
    for i in range(WARMUP, WARMUP + repeat):
        t0 = time.perf_counter()
        step(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    return median(latencies)


def store_steps(conninfo: str, repeat: int) -> list[dict[str, Any]]:
    from store import Store

    this_store.install(conninfo)
    users = workload.channel_user_ids(8, prefix="p")
    sessions = this_store.seed_users(conninfo, users, workload.history(workload.HISTORY_PAIRS))
    rows: list[dict[str, Any]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE profile_commit (i integer)")
        user_id = conn.execute(
            "SELECT user_id FROM sessions WHERE session_id = %s", (sessions[0],)
        ).fetchone()[0]  # type: ignore[index]
        for label, sql, needs in STORE_PARTS:
            params = None if needs is None else (user_id if needs == "user" else sessions[0],)
            try:
                ms: float | None = _timed(_statement(conn, sql, params), repeat)
            except psycopg.Error:
                ms = None
            rows.append({"design": "store", "step": label, "ms": ms})
    store = Store(conninfo, min_size=1, max_size=1, rate_per_minute=UNLIMITED)
    try:

        def turn(i: int) -> list[tuple[str, Callable[[], object]]]:
            user_text, reply = texts(i)
            box: list[Any] = []
            return [
                (
                    "begin_turn (call)",
                    lambda: box.append(store.begin_turn(workload.CHANNEL, users[i % len(users)])),
                ),
                (
                    "finish_turn (call)",
                    lambda: store.finish_turn(
                        box[0],
                        user_text,
                        reply,
                        input_tokens=1200,
                        output_tokens=300,
                        cached_tokens=800,
                    ),
                ),
            ]

        rows.extend(_turns("store", turn, repeat))
    finally:
        store.close()
    return rows


def _turns(
    design: str, turn: Callable[[int], list[tuple[str, Callable[[], object]]]], repeat: int
) -> list[dict[str, Any]]:
    """Median latency of each step of ``turn(i)``, its steps run in order, turn after turn."""
    latencies: dict[str, list[float]] = {}
    for i in range(WARMUP + repeat):
        for label, step in turn(i):
            t0 = time.perf_counter()
            step()
            if i >= WARMUP:
                latencies.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
    return [
        {"design": design, "step": label, "ms": median(values)}
        for label, values in latencies.items()
    ]


def seed_steps(conninfo: str, repeat: int) -> list[dict[str, Any]]:
    seed_port.install(conninfo)
    users = workload.channel_user_ids(8, prefix="p")
    seed_port.seed_users(
        conninfo, workload.CHANNEL, users, workload.history(workload.HISTORY_PAIRS)
    )
    seed = seed_port.Seed(conninfo, rate_limit_per_minute=UNLIMITED)
    try:
        usage = seed_port.Usage()

        def turn(i: int) -> list[tuple[str, Callable[[], object]]]:
            pair = workload.pair(i)
            found: dict[str, Any] = {}
            return [
                (
                    "getOrCreateUser",
                    lambda: found.update(
                        user=seed.get_or_create_user(workload.CHANNEL, users[i % len(users)])
                    ),
                ),
                ("checkRateLimit", lambda: seed.check_rate_limit(found["user"]["user_id"])),
                (
                    "getOrCreateSession (reads the history)",
                    lambda: found.update(
                        session=seed.get_or_create_session(found["user"]["user_id"])
                    ),
                ),
                (
                    "appendMessages (a 900-byte pair)",
                    lambda: seed.append_messages(found["session"]["session_id"], pair),
                ),
                (
                    "trimSessionHistory",
                    lambda: seed.trim_session_history(found["session"]["session_id"]),
                ),
                (
                    "trackUsage",
                    lambda: seed.track_usage(found["user"]["user_id"], workload.CHANNEL, usage),
                ),
            ]

        return _turns("seed port", turn, repeat)
    finally:
        seed.close()
