"""bot integrations: aiogram's FSM storage, and the version of the published proactive list

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

Two new tables, nothing else touched (online-safe: creating the foreign key to ``users`` on an
empty table takes a brief lock and scans nothing). ``proactive_list_state`` holds the version
the proactive_reload job raises when ``proactive_user_list`` changes; bots keeping the list in
memory (``store.ProactiveUsers``) reload when it moves. ``aiogram_fsm_states`` is the state
storage of store/integrations/aiogram.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "proactive_list_state",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "published_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("singleton", name=op.f("ck_proactive_list_state_singleton")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_proactive_list_state")),
    )
    op.create_table(
        "aiogram_fsm_states",
        sa.Column("bot_id", sa.BigInteger(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("telegram_user_id", sa.BigInteger(), nullable=False),
        sa.Column("thread_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "business_connection_id", sa.Text(), server_default=sa.text("''"), nullable=False
        ),
        sa.Column("destiny", sa.Text(), server_default=sa.text("'default'"), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_aiogram_fsm_states_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "bot_id",
            "chat_id",
            "telegram_user_id",
            "thread_id",
            "business_connection_id",
            "destiny",
            name=op.f("pk_aiogram_fsm_states"),
        ),
    )
    op.create_index("ix_aiogram_fsm_states_user_id", "aiogram_fsm_states", ["user_id"])
    op.create_index(
        "ix_aiogram_fsm_states_channel_telegram_user_id",
        "aiogram_fsm_states",
        ["channel", "telegram_user_id"],
    )


def downgrade() -> None:
    op.drop_table("aiogram_fsm_states")
    op.drop_table("proactive_list_state")
