"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "archived_sessions",
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("last_active", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "archived_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_archived_sessions")),
    )
    op.create_index(
        "ix_archived_sessions_archived_at", "archived_sessions", ["archived_at"], unique=False
    )
    op.create_index("ix_archived_sessions_user_id", "archived_sessions", ["user_id"], unique=False)
    op.create_table(
        "job_runs",
        sa.Column("run_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("replica_id", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.Column("rows", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('running', 'success', 'failure', 'skipped')",
            name=op.f("ck_job_runs_outcome"),
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_job_runs")),
    )
    op.create_index(
        "ix_job_runs_job_started_at",
        "job_runs",
        ["job", sa.literal_column("started_at DESC")],
        unique=False,
    )
    op.create_table(
        "persons",
        sa.Column(
            "person_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_persons")),
    )
    op.create_table(
        "proactive_user_list",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("chat_id", sa.Text(), nullable=False),
        sa.Column(
            "loaded_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_proactive_user_list")),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("day", "user_id", "channel", name=op.f("pk_usage_daily")),
    )
    op.create_table(
        "archived_session_messages",
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["archived_sessions.session_id"],
            name=op.f("fk_archived_session_messages_session_id_archived_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_archived_session_messages")),
    )
    op.create_table(
        "users",
        sa.Column(
            "user_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("channel_user_id", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("home_location", sa.Text(), nullable=True),
        sa.Column("person_id", sa.UUID(), nullable=True),
        sa.Column("authenticated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.person_id"],
            name=op.f("fk_users_person_id_persons"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    op.create_index("ix_users_person_id", "users", ["person_id"], unique=False)
    op.create_index(
        "uq_users_channel_channel_user_id", "users", ["channel", "channel_user_id"], unique=True
    )
    op.create_table(
        "link_code_failures",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("window_start", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("locked_until", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_link_code_failures_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_link_code_failures")),
    )
    op.create_table(
        "link_codes",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("used_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("used_by", sa.UUID(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_link_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_link_codes")),
    )
    op.create_index("ix_link_codes_expires_at", "link_codes", ["expires_at"], unique=False)
    op.create_index("ix_link_codes_user_id", "link_codes", ["user_id"], unique=False)
    op.create_table(
        "proactive_users",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("chat_id", sa.Text(), nullable=False),
        sa.Column(
            "registered_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_proactive_users_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_proactive_users")),
    )
    op.create_index("ix_proactive_users_chat_id", "proactive_users", ["chat_id"], unique=False)
    op.create_table(
        "rate_limits",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("window_start", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("request_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("window_seconds > 0", name=op.f("ck_rate_limits_window_seconds")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_rate_limits_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "user_id", "window_seconds", "window_start", name=op.f("pk_rate_limits")
        ),
    )
    op.create_index("ix_rate_limits_window_start", "rate_limits", ["window_start"], unique=False)
    op.create_table(
        "sessions",
        sa.Column(
            "session_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_active",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("next_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_last_active", "sessions", ["last_active"], unique=False)
    op.create_index(
        "ix_sessions_user_id_last_active",
        "sessions",
        ["user_id", sa.literal_column("last_active DESC")],
        unique=False,
    )
    op.create_table(
        "usage_stats",
        sa.Column(
            "stat_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("rolled_up", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint(
            "input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0",
            name=op.f("ck_usage_stats_tokens"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_usage_stats_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("stat_id", name=op.f("pk_usage_stats")),
    )
    op.create_index("ix_usage_stats_created_at", "usage_stats", ["created_at"], unique=False)
    op.create_index(
        "ix_usage_stats_pending",
        "usage_stats",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("NOT rolled_up"),
    )
    op.create_index("ix_usage_stats_user_id", "usage_stats", ["user_id"], unique=False)
    op.create_table(
        "session_messages",
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "role IN ('user', 'assistant', 'system', 'tool')", name=op.f("ck_session_messages_role")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_session_messages_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_session_messages")),
    )


def downgrade() -> None:
    op.drop_table("session_messages")
    op.drop_index("ix_usage_stats_user_id", table_name="usage_stats")
    op.drop_index(
        "ix_usage_stats_pending",
        table_name="usage_stats",
        postgresql_where=sa.text("NOT rolled_up"),
    )
    op.drop_index("ix_usage_stats_created_at", table_name="usage_stats")
    op.drop_table("usage_stats")
    op.drop_index("ix_sessions_user_id_last_active", table_name="sessions")
    op.drop_index("ix_sessions_last_active", table_name="sessions")
    op.drop_table("sessions")
    op.drop_index("ix_rate_limits_window_start", table_name="rate_limits")
    op.drop_table("rate_limits")
    op.drop_index("ix_proactive_users_chat_id", table_name="proactive_users")
    op.drop_table("proactive_users")
    op.drop_index("ix_link_codes_user_id", table_name="link_codes")
    op.drop_index("ix_link_codes_expires_at", table_name="link_codes")
    op.drop_table("link_codes")
    op.drop_table("link_code_failures")
    op.drop_index("uq_users_channel_channel_user_id", table_name="users")
    op.drop_index("ix_users_person_id", table_name="users")
    op.drop_table("users")
    op.drop_table("archived_session_messages")
    op.drop_table("usage_daily")
    op.drop_table("proactive_user_list")
    op.drop_table("persons")
    op.drop_index("ix_job_runs_job_started_at", table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_index("ix_archived_sessions_user_id", table_name="archived_sessions")
    op.drop_index("ix_archived_sessions_archived_at", table_name="archived_sessions")
    op.drop_table("archived_sessions")
