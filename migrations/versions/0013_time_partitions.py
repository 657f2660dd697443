"""time partitions: rate_limits and usage_stats become range-partitioned by time, online

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

Each table is converted in place while bots keep writing (docs/partitions.md):

1. Catalog-only changes and indexes built CONCURRENTLY on the existing table: the keys the
   partitioned table needs (usage_stats: inserted_xid, a unique (stat_id, created_at)).
2. A CHECK constraint "key < cutover" added NOT VALID, then validated (a scan that does not
   block writes). The cutover is the first UTC midnight after every row present and at least an
   hour from now.
3. One short transaction (lock_timeout, retried): the table is renamed to ``<table>_legacy``,
   the partitioned ``<table>`` is created with the same indexes, and the old table is attached
   as its partition FROM (MINVALUE) TO (cutover); the validated CHECK proves the range and the
   existing indexes are adopted, so the ATTACH scans and builds nothing. A DEFAULT partition is
   the safety net; partition_maintenance makes the daily partitions from the cutover on.

No row is copied, so none is lost or counted twice. Rows written to the old table until the
swap are rows of the legacy partition. usage_stats rows from before the swap keep their
``rolled_up`` flag (0.1.0's rollup may still count them) and have no inserted_xid; rows written
through the partitioned table carry inserted_xid and leave rolled_up NULL (the watermark rollup
counts them; 0.1.0's statements skip them).

The downgrade is offline: it copies the rows back into plain tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from alembic import op
from psycopg import sql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How long the swap may wait for the bots' locks, and how often it tries.
# (Below the server's deadlock_timeout, 1 s by default: the bots lock users and these tables in
# both orders, so the swap can close a lock cycle with a bot; waiting less than any deadlock
# check makes the swap the one that yields and retries, never the bot.)
SWAP_LOCK_TIMEOUT = "200ms"
SWAP_ATTEMPTS = 60

RATE_LIMITS_COLUMNS = """
    user_id uuid NOT NULL,
    window_seconds integer NOT NULL,
    window_start timestamptz NOT NULL,
    request_count integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_rate_limits PRIMARY KEY (user_id, window_seconds, window_start),
    CONSTRAINT ck_rate_limits_window_seconds CHECK (window_seconds > 0),
    CONSTRAINT fk_rate_limits_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE
"""

USAGE_STATS_COLUMNS = """
    stat_id uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL,
    channel text NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    rolled_up boolean,
    inserted_xid bigint DEFAULT (pg_current_xact_id())::text::bigint,
    CONSTRAINT pk_usage_stats PRIMARY KEY (stat_id, created_at),
    CONSTRAINT ck_usage_stats_tokens
        CHECK (input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0),
    CONSTRAINT fk_usage_stats_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE
"""

# Secondary indexes: name -> definition (columns and predicate), on the parent and the legacy
# partition alike.
RATE_LIMITS_INDEXES = {"ix_rate_limits_window_start": "(window_start)"}
USAGE_STATS_INDEXES = {
    "ix_usage_stats_pending": "(created_at) WHERE NOT rolled_up",
    "ix_usage_stats_created_at": "(created_at)",
    "ix_usage_stats_user_id": "(user_id)",
    "ix_usage_stats_inserted_xid": "(inserted_xid)",
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS usage_rollup_state (
            singleton boolean NOT NULL DEFAULT true,
            watermark bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_usage_rollup_state PRIMARY KEY (singleton),
            CONSTRAINT ck_usage_rollup_state_singleton CHECK (singleton)
        );
        INSERT INTO usage_rollup_state DEFAULT VALUES ON CONFLICT DO NOTHING;
        """
    )
    # The steps below need transactions of their own (CONCURRENTLY, short lock waits): what
    # the migration did so far is committed first. Every step can run again, so a migration
    # interrupted half-way is finished by the next `sessionkeeper migrate`.
    bind = op.get_bind()
    bind.commit()
    conn: Any = bind.connection.driver_connection
    conn.autocommit = True
    try:
        if not _partitioned(conn, "usage_stats"):
            _prepare_usage_stats(conn)
        for table, key, columns, indexes in (
            ("rate_limits", "window_start", RATE_LIMITS_COLUMNS, RATE_LIMITS_INDEXES),
            ("usage_stats", "created_at", USAGE_STATS_COLUMNS, USAGE_STATS_INDEXES),
        ):
            if not _partitioned(conn, table):
                _convert(conn, table, key, columns, indexes)
    finally:
        conn.autocommit = False


def _partitioned(conn: Any, table: str) -> bool:
    row = conn.execute(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", (table,)
    ).fetchone()
    return bool(row and row[0])


def _prepare_usage_stats(conn: Any) -> None:
    """The columns and the unique key the partitioned usage_stats needs, on the live table.

    ADD COLUMN without a default and DROP NOT NULL change the catalog only; the indexes are
    built CONCURRENTLY. Rows written to the old table meanwhile get inserted_xid NULL and
    rolled_up false: legacy rows, counted by the flag.
    """
    _short(conn, "ALTER TABLE usage_stats ADD COLUMN IF NOT EXISTS inserted_xid bigint")
    _short(conn, "ALTER TABLE usage_stats ALTER COLUMN rolled_up DROP NOT NULL")
    conn.execute(
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS usage_stats_legacy_key"
        " ON usage_stats (stat_id, created_at)"
    )
    conn.execute(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_usage_stats_inserted_xid"
        " ON usage_stats (inserted_xid)"
    )


def _convert(conn: Any, table: str, key: str, columns: str, indexes: dict[str, str]) -> None:
    legacy = f"{table}_legacy"
    # The first UTC midnight after every row present and at least an hour from now.
    cutover_query = sql.SQL(
        "SELECT to_timestamp((floor(extract(epoch FROM greatest("
        "now() + interval '1 hour', (SELECT max({key}) FROM {table}))) / 86400) + 1) * 86400)"
    ).format(key=sql.Identifier(key), table=sql.Identifier(table))
    cutover = conn.execute(cutover_query).fetchone()[0]
    # DDL takes no parameters: the bound is written into the statements as a literal.
    bound = sql.Literal(cutover).as_string(conn)
    check = f"ck_{legacy}_range"
    # (A run interrupted before the swap left its constraint: it is replaced.)
    _short(conn, f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}")
    _short(conn, f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({key} < {bound}) NOT VALID")
    # Scans the table under SHARE UPDATE EXCLUSIVE: writes go on meanwhile.
    conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {check}")

    renames = [f"ALTER INDEX {name} RENAME TO {name.replace(table, legacy, 1)}" for name in indexes]
    if table == "usage_stats":
        # The partitioned table's key includes the partition key; the unique index built
        # beforehand becomes the legacy partition's primary key (no scan: columns are NOT NULL).
        renames = [
            *renames,
            f"ALTER TABLE {legacy} DROP CONSTRAINT pk_usage_stats",
            f"ALTER TABLE {legacy} ADD CONSTRAINT pk_{legacy} PRIMARY KEY"
            " USING INDEX usage_stats_legacy_key",
        ]
    else:
        renames.append(f"ALTER INDEX pk_{table} RENAME TO pk_{legacy}")
    create = [
        f"CREATE TABLE {table} ({columns}) PARTITION BY RANGE ({key})",
        *(f"CREATE INDEX {name} ON {table} {definition}" for name, definition in indexes.items()),
        f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT",
    ]
    attach = (
        f"ALTER TABLE {table} ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO ({bound})"
    )
    # Checked under the rename's lock: an empty table (a new installation) is not kept, so
    # the time ranges all belong to partition_maintenance's partitions.
    _swap(
        conn, [f"ALTER TABLE {table} RENAME TO {legacy}", *renames], then=(legacy, create, attach)
    )


def _short(conn: Any, statement: str) -> None:
    _swap(conn, [statement])


def _swap(conn: Any, statements: list[str], then: tuple[str, list[str], str] | None = None) -> None:
    """Run ``statements`` in one transaction that waits at most SWAP_LOCK_TIMEOUT for locks,
    retrying: bots queue behind the waiting ALTER for at most that long per attempt.

    ``then`` = (legacy, create, attach): after ``statements``, run ``create``, then drop the
    table ``legacy`` if it is empty, else ``attach`` it.
    """
    for attempt in range(SWAP_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                if then is not None:
                    # The new table's foreign key (or dropping the empty old one's) locks
                    # users: taken first, in the bots' order (users, then the table), so the
                    # swap never deadlocks with a bot's turn.
                    conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                for statement in statements:
                    conn.execute(statement)
                if then is not None:
                    legacy, create, attach = then
                    empty = conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {legacy})")  # noqa: S608
                    drop = empty.fetchone()[0]
                    for statement in create:
                        conn.execute(statement)
                    conn.execute(f"DROP TABLE {legacy}" if drop else attach)
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == SWAP_ATTEMPTS - 1:
                raise
            time.sleep(0.2)


def downgrade() -> None:
    # Offline: the rows are copied back into plain tables shaped as before this revision.
    # A raw row the watermark rollup has counted is flagged rolled_up, as the old rollup did.
    op.execute(
        """
        CREATE TEMP TABLE rate_limits_copy AS SELECT * FROM rate_limits;
        CREATE TEMP TABLE usage_stats_copy AS
            SELECT s.stat_id, s.user_id, s.channel, s.input_tokens, s.output_tokens,
                   s.cached_tokens, s.created_at,
                   coalesce(s.rolled_up, s.inserted_xid < w.watermark) AS rolled_up
            FROM usage_stats s, usage_rollup_state w;
        DROP TABLE rate_limits, usage_stats, usage_rollup_state;
        CREATE TABLE rate_limits (
            user_id uuid NOT NULL,
            window_seconds integer NOT NULL,
            window_start timestamptz NOT NULL,
            request_count integer NOT NULL DEFAULT 0,
            CONSTRAINT pk_rate_limits PRIMARY KEY (user_id, window_seconds, window_start),
            CONSTRAINT ck_rate_limits_window_seconds CHECK (window_seconds > 0),
            CONSTRAINT fk_rate_limits_user_id_users FOREIGN KEY (user_id)
                REFERENCES users (user_id) ON DELETE CASCADE
        );
        CREATE INDEX ix_rate_limits_window_start ON rate_limits (window_start);
        CREATE TABLE usage_stats (
            stat_id uuid NOT NULL DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL,
            channel text NOT NULL,
            input_tokens bigint NOT NULL DEFAULT 0,
            output_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            rolled_up boolean NOT NULL DEFAULT false,
            CONSTRAINT pk_usage_stats PRIMARY KEY (stat_id),
            CONSTRAINT ck_usage_stats_tokens
                CHECK (input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0),
            CONSTRAINT fk_usage_stats_user_id_users FOREIGN KEY (user_id)
                REFERENCES users (user_id) ON DELETE CASCADE
        );
        CREATE INDEX ix_usage_stats_created_at ON usage_stats (created_at);
        CREATE INDEX ix_usage_stats_pending ON usage_stats (created_at) WHERE NOT rolled_up;
        CREATE INDEX ix_usage_stats_user_id ON usage_stats (user_id);
        INSERT INTO rate_limits SELECT * FROM rate_limits_copy;
        INSERT INTO usage_stats SELECT * FROM usage_stats_copy;
        DROP TABLE rate_limits_copy, usage_stats_copy;
        """
    )
