"""python-telegram-bot persistence: erasure records

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06

One new table, nothing else touched (online-safe). ``telegram_persistence_erasures`` holds,
per erased user, when it was erased, keyed by a hash of its user id
(sk_telegram_erasure_key) and holding nothing else of it: a bot process's write of data it
held from before that moment is dropped (sk_telegram_write), so that an erasure is never
undone by a write that was pending (an outage) or not made yet (a new user's first data, a
conversation's first state). sk_forget and sk_telegram_forget write the records.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telegram_persistence_erasures",
        sa.Column("erasure_key", sa.Text(), nullable=False),
        sa.Column("erased_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("erasure_key", name=op.f("pk_telegram_persistence_erasures")),
    )


def downgrade() -> None:
    op.drop_table("telegram_persistence_erasures")
