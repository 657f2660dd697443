"""legacy quarantine: messages of TypeScript-era histories that break today's rules

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "legacy_quarantined_messages",
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("array_index", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "quarantined_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "session_id", "array_index", name=op.f("pk_legacy_quarantined_messages")
        ),
    )
    op.create_index(
        "ix_legacy_quarantined_messages_user_id",
        "legacy_quarantined_messages",
        ["user_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_legacy_quarantined_messages_user_id", table_name="legacy_quarantined_messages"
    )
    op.drop_table("legacy_quarantined_messages")
