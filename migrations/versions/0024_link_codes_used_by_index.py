"""link_codes by redeemer: erasure and export find the codes a user redeemed by index

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06

``sk_forget`` locks and deletes the codes a user made *or redeemed*: ``WHERE user_id =
ANY(...) OR used_by = ANY(...)``. Only ``user_id`` had an index, so both statements read the
whole table for every erasure: at the jobs benchmark's backlog /1 (100,000 link codes) about
three quarters of an erasure's server time (``user_retention``: 46 users/s).
``ix_link_codes_used_by`` turns the OR into two index lookups (a BitmapOr). Partial: most
codes are never redeemed (``used_by`` NULL), and ``used_by = ANY(...)`` implies ``used_by IS
NOT NULL``, so the planner uses it.

Online: built ``CONCURRENTLY`` (bots keep making and redeeming codes), in autocommit after what
the migration did so far is committed, as revision 0021 does. An index an interrupted build
left invalid is dropped and built again, so the next `sessionkeeper migrate` finishes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_link_codes_used_by"


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
        conn.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON link_codes (used_by)"
            " WHERE used_by IS NOT NULL"
        )
    finally:
        conn.autocommit = False


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
