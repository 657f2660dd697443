"""The baseline: a straight port of the seed's ``session-store.ts`` (see shared/seed).

Its own schema in its own database: messages are a JSONB array on ``sessions``, every step is
one statement in autocommit, as the seed's ``pg`` Pool runs them. The one liberty taken is an
index on ``sessions (user_id, last_active DESC)`` so that finding a user's latest session is not
a sequential scan: the seed's document lists no indexes, and a port without it would be slower
for a reason that says nothing about its design.

A bot's turn with the seed (``Seed.turn``): get-or-create user, rate check, latest session (its
``messages`` are the history), append the user message and the reply, trim to 20 pairs, track
usage: six statements, six round trips.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# -- the seed's schema ------------------------------------------------------------------------

DDL = """
CREATE TABLE persons (
    person_id  uuid PRIMARY KEY,
    created_at timestamp NOT NULL DEFAULT now()
);
CREATE TABLE users (
    user_id         uuid PRIMARY KEY,
    channel         text NOT NULL,
    channel_user_id text NOT NULL,
    display_name    text,
    home_location   text,
    person_id       uuid REFERENCES persons,
    authenticated   boolean NOT NULL DEFAULT false,
    created_at      timestamp NOT NULL DEFAULT now(),
    updated_at      timestamp NOT NULL DEFAULT now(),
    UNIQUE (channel, channel_user_id)
);
CREATE TABLE sessions (
    session_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users,
    messages    jsonb NOT NULL DEFAULT '[]',
    last_active timestamp NOT NULL DEFAULT now(),
    created_at  timestamp NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_id_last_active ON sessions (user_id, last_active DESC);
CREATE TABLE rate_limits (
    user_id       uuid NOT NULL REFERENCES users,
    window_start  timestamp NOT NULL,
    request_count integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, window_start)
);
CREATE TABLE usage_stats (
    stat_id       uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users,
    channel       text NOT NULL,
    input_tokens  integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    cached_tokens integer NOT NULL DEFAULT 0,
    created_at    timestamp NOT NULL DEFAULT now()
);
CREATE TABLE link_codes (
    code       text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users,
    expires_at timestamp NOT NULL
);
"""

# -- the seed's statements, one per step ----------------------------------------------------

GET_OR_CREATE_USER = """
INSERT INTO users (user_id, channel, channel_user_id, authenticated)
VALUES (%s, %s, %s, true)
ON CONFLICT (channel, channel_user_id) DO UPDATE
SET authenticated = true, updated_at = NOW()
RETURNING *
"""

CHECK_RATE_LIMIT = """
INSERT INTO rate_limits (user_id, window_start, request_count)
VALUES (%s, date_trunc('minute', NOW()), 1)
ON CONFLICT (user_id, window_start) DO UPDATE
SET request_count = rate_limits.request_count + 1
RETURNING request_count
"""

# The seed tests staleness in the application; the server's clock does it here, in the same
# statement, so that the port does not depend on the client's time zone.
LATEST_SESSION = """
SELECT *, last_active < NOW() - make_interval(mins => %s) AS stale
FROM sessions WHERE user_id = %s ORDER BY last_active DESC LIMIT 1
"""

CREATE_SESSION = """
INSERT INTO sessions (session_id, user_id) VALUES (%s, %s) RETURNING *
"""

APPEND_MESSAGES = """
UPDATE sessions SET messages = messages || %s, last_active = NOW() WHERE session_id = %s
"""

# Keep the last max_pairs * 2 elements of the array.
TRIM_SESSION_HISTORY = """
UPDATE sessions
SET messages = (
    SELECT coalesce(jsonb_agg(element ORDER BY position), '[]')
    FROM jsonb_array_elements(messages) WITH ORDINALITY AS kept(element, position)
    WHERE position > jsonb_array_length(messages) - %(keep)s
)
WHERE session_id = %(session_id)s AND jsonb_array_length(messages) > %(keep)s
"""

TRACK_USAGE = """
INSERT INTO usage_stats (stat_id, user_id, channel, input_tokens, output_tokens, cached_tokens)
VALUES (%s, %s, %s, %s, %s, %s)
"""

RATE_LIMIT_PER_MINUTE = 15
STALE_MINUTES = 30


@dataclass
class Usage:
    input_tokens: int = 1200
    output_tokens: int = 300
    cached_tokens: int = 800


class Seed:
    """The seed's store over one autocommit connection (one per worker, as a pool would lend)."""

    def __init__(self, conninfo: str, *, rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE):
        self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)
        self.rate_limit_per_minute = rate_limit_per_minute

    def close(self) -> None:
        self.conn.close()

    # one method per seed export, each one statement (get_or_create_session: one or two)

    def get_or_create_user(self, channel: str, channel_user_id: str) -> dict[str, Any]:
        row = self.conn.execute(
            GET_OR_CREATE_USER, (uuid.uuid4(), channel, channel_user_id)
        ).fetchone()
        assert row is not None
        return row

    def check_rate_limit(self, user_id: uuid.UUID) -> bool:
        row = self.conn.execute(CHECK_RATE_LIMIT, (user_id,)).fetchone()
        assert row is not None
        return int(row["request_count"]) <= self.rate_limit_per_minute

    def get_or_create_session(self, user_id: uuid.UUID) -> dict[str, Any]:
        row = self.conn.execute(LATEST_SESSION, (STALE_MINUTES, user_id)).fetchone()
        if row is None or row["stale"]:
            row = self.conn.execute(CREATE_SESSION, (uuid.uuid4(), user_id)).fetchone()
        assert row is not None
        return row

    def append_messages(self, session_id: uuid.UUID, messages: list[dict[str, str]]) -> None:
        self.conn.execute(APPEND_MESSAGES, (Jsonb(messages), session_id))

    def trim_session_history(self, session_id: uuid.UUID, max_pairs: int = 20) -> None:
        self.conn.execute(TRIM_SESSION_HISTORY, {"keep": max_pairs * 2, "session_id": session_id})

    def track_usage(self, user_id: uuid.UUID, channel: str, usage: Usage) -> None:
        self.conn.execute(
            TRACK_USAGE,
            (
                uuid.uuid4(),
                user_id,
                channel,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
            ),
        )

    def turn(self, channel: str, channel_user_id: str, text: str, reply: str) -> int:
        """What a bot does per message with the seed; returns the history length it read."""
        user = self.get_or_create_user(channel, channel_user_id)
        if not self.check_rate_limit(user["user_id"]):
            return -1
        session = self.get_or_create_session(user["user_id"])
        history = session["messages"][-40:]
        now = _timestamp()
        self.append_messages(
            session["session_id"],
            [
                {"role": "user", "content": text, "timestamp": now},
                {"role": "assistant", "content": reply, "timestamp": now},
            ],
        )
        self.trim_session_history(session["session_id"])
        self.track_usage(user["user_id"], channel, Usage())
        return len(history)


def _timestamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def install(conninfo: str) -> None:
    """Create the seed's schema in an empty database."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(DDL)


def seed_users(
    conninfo: str,
    channel: str,
    channel_user_ids: list[str],
    history: list[dict[str, str]],
) -> None:
    """Users, each with one active session already holding ``history``."""
    messages = json.dumps(history)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        user_rows = [(uuid.uuid4(), channel, cid) for cid in channel_user_ids]
        cur.executemany(
            "INSERT INTO users (user_id, channel, channel_user_id, authenticated)"
            " VALUES (%s, %s, %s, true)",
            user_rows,
        )
        cur.executemany(
            "INSERT INTO sessions (session_id, user_id, messages) VALUES (%s, %s, %s::jsonb)",
            [(uuid.uuid4(), row[0], messages) for row in user_rows],
        )
