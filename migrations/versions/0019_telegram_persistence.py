"""python-telegram-bot persistence: the table of store/integrations/telegram.py

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06

One new table, nothing else touched (online-safe: the foreign key to ``users`` is created on an
empty table). ``telegram_persistence`` holds a ``telegram.ext.BasePersistence``'s user_data,
chat_data, bot_data, callback_data and ConversationHandler states as JSON; erasure and export
find a user's rows by ``owner_ids`` (sk_forget, export_telegram_persistence).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telegram_persistence",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("key", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column(
            "owner_ids",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('user_data', 'chat_data', 'bot_data', 'callback_data', 'conversation')",
            name=op.f("ck_telegram_persistence_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_telegram_persistence_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "namespace", "kind", "name", "key", name=op.f("pk_telegram_persistence")
        ),
    )
    op.create_index("ix_telegram_persistence_user_id", "telegram_persistence", ["user_id"])
    op.create_index(
        "ix_telegram_persistence_owner_ids",
        "telegram_persistence",
        ["owner_ids"],
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_table("telegram_persistence")
