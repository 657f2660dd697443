"""user routing: keyed user ids, and user_id on session_messages and turn_receipts, online

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

So that every hot-path statement can name the user, the column Citus would distribute by
(docs/scaling.md, issue 16):

1. ``user_key_secret``: one row of 32 random bytes, the key of ``sk_user_key`` (new users' ids
   are a keyed hash of their channel identity). Made here, once; never sent to a client.
   ``users.user_id`` loses its random default for a ``BEFORE INSERT ... WHEN (NEW.user_id IS
   NULL)`` trigger that gives the key (``sk_key_new_user``): a user inserted without an id (by
   release 0.1.0's get_or_create_user) gets its key too.
2. ``session_messages.user_id`` and ``turn_receipts.user_id``, nullable (a catalogue change).
3. A ``BEFORE INSERT`` trigger on each, ``WHEN (NEW.user_id IS NULL)``, that copies the
   session's user (``sk_fill_user_id``): bots of release 0.1.0 (and anything else that does
   not give the column) keep inserting rows that carry it. The triggers must exist before the
   backfill, and store/sql/functions.sql is applied only after the revisions, so the revision
   creates the three functions it needs itself, as they were when it was written
   (``FUNCTIONS``): a revision is self-contained, and a later release may change or drop
   them in functions.sql without changing what this revision does.
4. ``CHECK (user_id IS NOT NULL) NOT VALID``: enforced from now on for new rows.
5. The existing rows, in batches of ``BATCH`` in primary-key order, each its own transaction.
6. ``VALIDATE CONSTRAINT``: a scan under SHARE UPDATE EXCLUSIVE, which does not block writes.
7. Extended statistics (``dependencies``) on (session_id, user_id), then ANALYZE: the session
   determines the user, and without them the planner multiplies the selectivities of the two
   equalities every statement now has, expects one row, and reads a whole session's history
   (and sorts it) instead of its newest rows by the primary key (tests/integration/
   test_store_plans.py).

Every DDL step waits at most LOCK_TIMEOUT for its lock and is retried; every step can run
again, so a migration interrupted half-way is finished by the next `sessionkeeper migrate`.
The next release contracts: NOT NULL (proved by the validated CHECK, no scan) and the triggers
dropped, once no bot of 0.1.0 runs (docs/upgrades.md).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from alembic import context, op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Below the server's deadlock_timeout (1 s by default), as in revision 0013: the migration is
# the one that yields and retries, never a bot.
LOCK_TIMEOUT = "200ms"
ATTEMPTS = 60
BATCH = 5000

# sk_user_key, sk_key_new_user and sk_fill_user_id as of this revision. functions.sql, applied
# at head right after, replaces them with the release's own definitions.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION sk_user_key(p_channel text, p_channel_user_id text) RETURNS uuid
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_hash bytea;
BEGIN
    SELECT substr(sha256(k.secret || int4send(octet_length(convert_to(p_channel, 'UTF8')))
                         || convert_to(p_channel, 'UTF8')
                         || convert_to(p_channel_user_id, 'UTF8')), 1, 16)
    INTO v_hash FROM user_key_secret k;
    IF v_hash IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'user_key_secret is empty: run `sessionkeeper migrate`';
    END IF;
    -- Version 8 in the high nibble of byte 6, variant 10 in the two high bits of byte 8.
    v_hash := set_byte(v_hash, 6, (get_byte(v_hash, 6) & 15) | 128);
    v_hash := set_byte(v_hash, 8, (get_byte(v_hash, 8) & 63) | 128);
    RETURN encode(v_hash, 'hex')::uuid;
END $$;

CREATE OR REPLACE FUNCTION sk_key_new_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.user_id := sk_user_key(NEW.channel, NEW.channel_user_id);
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION sk_fill_user_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.user_id INTO NEW.user_id FROM sessions s WHERE s.session_id = NEW.session_id;
    RETURN NEW;
END $$;
"""

# The tables that get their session's user, and their primary keys (the backfill's order).
OWNED = {"session_messages": ("session_id", "seq"), "turn_receipts": ("session_id", "turn_id")}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS user_key_secret (
            singleton boolean NOT NULL DEFAULT true,
            secret bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_user_key_secret PRIMARY KEY (singleton),
            CONSTRAINT ck_user_key_secret_singleton CHECK (singleton),
            CONSTRAINT ck_user_key_secret_secret_length CHECK (octet_length(secret) >= 32)
        )
        """
    )
    # The steps below need transactions of their own (short lock waits, committed batches).
    bind = op.get_bind()
    bind.commit()
    conn: Any = bind.connection.driver_connection
    conn.autocommit = True
    try:
        conn.execute(
            "INSERT INTO user_key_secret (secret) VALUES (%s) ON CONFLICT DO NOTHING",
            (secrets.token_bytes(32),),
        )
        # CREATE OR REPLACE FUNCTION locks no table; functions.sql replaces them again at head.
        conn.execute(FUNCTIONS)
        if not _exists(conn, "pg_trigger", "tgname", "tg_users_user_id"):
            _short(
                conn,
                "CREATE TRIGGER tg_users_user_id BEFORE INSERT ON users FOR EACH ROW"
                " WHEN (NEW.user_id IS NULL) EXECUTE FUNCTION sk_key_new_user()",
            )
        # After the trigger: from here an insert without an id gets its key, not NULL.
        _short(conn, "ALTER TABLE users ALTER COLUMN user_id DROP DEFAULT")
        # The caller's progress callback (`sessionkeeper migrate` shows a bar), if it gave one.
        progress = context.config.attributes.get("progress")
        for table, key in OWNED.items():
            expand(conn, table)
            report = (
                (lambda done, what=f"{table}.user_id": progress(what, done)) if progress else None
            )
            backfill(conn, table, key, progress=report)
            conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT ck_{table}_user_id")
            # SHARE UPDATE EXCLUSIVE, like VALIDATE: writes go on.
            conn.execute(
                f"CREATE STATISTICS IF NOT EXISTS st_{table}_session_user (dependencies)"
                f" ON session_id, user_id FROM {table}"
            )
            conn.execute(f"ANALYZE {table}")
    finally:
        conn.autocommit = False


def expand(conn: Any, table: str) -> None:
    """Column, trigger and NOT VALID check, each step skipped when done already."""
    _short(conn, f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS user_id uuid")
    if not _exists(conn, "pg_trigger", "tgname", f"tg_{table}_user_id"):
        _short(
            conn,
            f"CREATE TRIGGER tg_{table}_user_id BEFORE INSERT ON {table} FOR EACH ROW"
            " WHEN (NEW.user_id IS NULL) EXECUTE FUNCTION sk_fill_user_id()",
        )
    if not _exists(conn, "pg_constraint", "conname", f"ck_{table}_user_id"):
        _short(
            conn,
            f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_user_id"
            " CHECK (user_id IS NOT NULL) NOT VALID",
        )


def backfill(
    conn: Any,
    table: str,
    key: tuple[str, str],
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Give every row its session's user, ``batch`` rows (in key order) a transaction; returns
    how many rows were filled (``progress`` is told the count after each batch). Rows inserted
    meanwhile carry the user (the trigger)."""
    first, second = key
    # Names from OWNED, not input.
    step = (
        f"WITH b AS (SELECT {first}, {second} FROM {table} {{where}}"  # noqa: S608
        f" ORDER BY {first}, {second} LIMIT {batch}),"
        f" filled AS (UPDATE {table} t SET user_id = s.user_id FROM b, sessions s"
        f" WHERE t.{first} = b.{first} AND t.{second} = b.{second}"
        f" AND s.session_id = b.{first} AND t.user_id IS NULL RETURNING 1)"
        f" SELECT (SELECT count(*) FROM filled),"
        f" (SELECT ARRAY[{first}::text, {second}::text] FROM b"
        f" ORDER BY {first} DESC, {second} DESC LIMIT 1)"
    )
    after: list[str] | None = None
    params: tuple[str, ...] = ()
    filled = 0
    while True:
        if after is None:
            statement, params = step.format(where=""), ()
        else:
            statement = step.format(where=f"WHERE ({first}, {second}) > (%s, %s)")
            params = tuple(after)
        row = _retried(conn, statement, params)
        filled += int(row[0])
        if progress is not None:
            progress(filled)
        if row[1] is None:
            return filled
        after = row[1]


def _exists(conn: Any, catalog: str, column: str, name: str) -> bool:
    # Names are ours (constants above), not input.
    query = f"SELECT EXISTS (SELECT 1 FROM {catalog} WHERE {column} = %s)"  # noqa: S608
    return bool(conn.execute(query, (name,)).fetchone()[0])


def _short(conn: Any, statement: str) -> None:
    _retried(conn, statement)


def _retried(conn: Any, statement: str, params: Sequence[Any] = ()) -> Any:
    """``statement`` in a transaction of its own that waits at most LOCK_TIMEOUT for a lock,
    retried; its first row (None if it returns none)."""
    for attempt in range(ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                cursor = conn.execute(statement, params or None)
                return cursor.fetchone() if cursor.description else None
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in OWNED:
        op.execute(f"DROP STATISTICS IF EXISTS st_{table}_session_user")
        op.execute(f"DROP TRIGGER IF EXISTS tg_{table}_user_id ON {table}")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS user_id")
    op.execute("ALTER TABLE users ALTER COLUMN user_id SET DEFAULT gen_random_uuid()")
    op.execute("DROP TRIGGER IF EXISTS tg_users_user_id ON users")
    op.execute("DROP TABLE IF EXISTS user_key_secret")
