"""message extra: what a message needs beyond role and content, online and archived

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

``session_messages.extra`` and ``archived_session_messages.extra``: one JSON object per
message (a tool message's ``tool_call_id``, an AI message's ``tool_calls``, content blocks),
NULL for plain text. Written by ``append_messages``/``finish_turn`` when a message carries it;
the LangChain integration keeps a message's fields there.

Online-safe and expand-only: a nullable column without a default is a catalogue change (no
table rewrite, no scan). Its ACCESS EXCLUSIVE lock is brief but would queue every bot behind
a long transaction holding a conflicting lock, so the lock wait is bounded: on timeout the
revision fails and can be re-run. Bots of release 0.1.0 neither read nor write the column.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("session_messages", "archived_session_messages")


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in TABLES:
        op.add_column(table, sa.Column("extra", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in TABLES:
        op.drop_column(table, "extra")
