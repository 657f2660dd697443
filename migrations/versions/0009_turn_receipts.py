"""turn receipts: finish_turn stores a turn once, even when retried after a lost answer

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25

A new, empty table: online-safe. Its foreign key takes a brief SHARE ROW EXCLUSIVE lock on
``sessions`` (no rows to check). The previous release's append statement does not know the
table and keeps working; its turns simply have no receipt.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "turn_receipts",
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("turn_id", sa.UUID(), nullable=False),
        sa.Column("appended", sa.Integer(), nullable=False),
        sa.Column("trimmed", sa.Integer(), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_turn_receipts_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "turn_id", name=op.f("pk_turn_receipts")),
    )


def downgrade() -> None:
    op.drop_table("turn_receipts")
