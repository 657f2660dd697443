"""LangGraph checkpoints: threads, checkpoints, channel values, list lines, pending writes

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06

New tables only (online-safe). The checkpointer of store/integrations/langgraph.py keeps its
checkpoints here; a thread may be tied to a user (``langgraph_threads.user_id``), and every row
of a thread goes with the thread, so erasure and user retention remove a user's checkpoints by
the cascade. A list channel value (LangGraph's message list) is stored as the first ``length``
items of a line that later values extend, instead of the whole list at every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def _tstz(name: str) -> sa.Column[object]:
    return sa.Column(name, postgresql.TIMESTAMP(timezone=True), server_default=NOW, nullable=False)


def _thread(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["thread_id"],
        ["langgraph_threads.thread_id"],
        name=op.f(f"fk_{table}_thread_id_langgraph_threads"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "langgraph_threads",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        _tstz("created_at"),
        _tstz("updated_at"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name=op.f("fk_langgraph_threads_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("thread_id", name=op.f("pk_langgraph_threads")),
    )
    op.create_index("ix_langgraph_threads_user_id", "langgraph_threads", ["user_id"])
    op.create_index("ix_langgraph_threads_updated_at", "langgraph_threads", ["updated_at"])
    op.create_table(
        "langgraph_checkpoints",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("parent_checkpoint_id", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("versions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _tstz("created_at"),
        _thread("langgraph_checkpoints"),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "checkpoint_id", name=op.f("pk_langgraph_checkpoints")
        ),
    )
    op.create_table(
        "langgraph_lines",
        sa.Column("line_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        _thread("langgraph_lines"),
        sa.PrimaryKeyConstraint("line_id", name=op.f("pk_langgraph_lines")),
    )
    op.create_index("ix_langgraph_lines_thread_id", "langgraph_lines", ["thread_id"])
    op.create_table(
        "langgraph_items",
        sa.Column("line_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["line_id"],
            ["langgraph_lines.line_id"],
            name=op.f("fk_langgraph_items_line_id_langgraph_lines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("line_id", "seq", name=op.f("pk_langgraph_items")),
    )
    op.create_table(
        "langgraph_blobs",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("line_id", sa.BigInteger(), nullable=True),
        sa.Column("length", sa.Integer(), nullable=True),
        _thread("langgraph_blobs"),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "channel", "version", name=op.f("pk_langgraph_blobs")
        ),
    )
    op.create_table(
        "langgraph_writes",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("task_path", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id", "checkpoint_ns", "checkpoint_id"],
            [
                "langgraph_checkpoints.thread_id",
                "langgraph_checkpoints.checkpoint_ns",
                "langgraph_checkpoints.checkpoint_id",
            ],
            name=op.f("fk_langgraph_writes_thread_id_langgraph_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "thread_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name=op.f("pk_langgraph_writes"),
        ),
    )


def downgrade() -> None:
    for table in (
        "langgraph_writes",
        "langgraph_blobs",
        "langgraph_items",
        "langgraph_lines",
        "langgraph_checkpoints",
        "langgraph_threads",
    ):
        op.drop_table(table)
