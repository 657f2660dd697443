"""usage_daily by user: erasure and export find a user's daily totals by index

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06

``usage_daily``'s primary key leads with ``day``, so ``DELETE FROM usage_daily WHERE user_id =
ANY(...)`` (``sk_forget``: every ``forget_user``, every user the ``user_retention`` job erases)
read the whole table: the jobs benchmark measured 16 users/s at backlog /1, 120k rows read per
user. ``ix_usage_daily_user_id`` makes it an index lookup.

Online: built ``CONCURRENTLY`` (the rollup and erasure keep writing), in autocommit after what
the migration did so far is committed, as revision 0013 does. An index an interrupted build
left invalid is dropped and built again, so the next `sessionkeeper migrate` finishes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_usage_daily_user_id"


def upgrade() -> None:
    bind = op.get_bind()
    bind.commit()
    conn: Any = bind.connection.driver_connection
    conn.autocommit = True
    try:
        invalid = conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace"
            " AND NOT i.indisvalid",
            (INDEX,),
        ).fetchone()
        if invalid:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON usage_daily (user_id)")
    finally:
        conn.autocommit = False


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
