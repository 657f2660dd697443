"""conversations: a session belongs to a user and the chat it happens in

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

``sessions.chat_id`` and ``archived_sessions.chat_id`` (text, NULL for the user's private
chat: every session made before this revision, and every session of a bot of release 0.2.0).
A user's conversation is (user, chat): ``sk_begin_turn_v4`` finds or opens the session of that
pair, and the private functions of 0.2.0 (``sk_begin_turn_v3``, ``sk_current_session``) only
see sessions without a chat, so a group's history never reaches a private prompt.

``ix_sessions_chat_id_last_active`` (partial: group sessions only) finds a group's members'
sessions for a shared group conversation (docs/conversations.md).

Two ``BEFORE INSERT`` triggers keep the chat across the archive while daemons of 0.2.0 run
(their archive and restore statements do not name the column): ``sk_fill_archived_chat``
copies it from the session being archived, ``sk_fill_restored_chat`` from the archive a
session is restored from. Both fire only ``WHEN (NEW.chat_id IS NULL)``; the release after
0.3.0 drops them (docs/upgrades.md).

Online-safe and expand-only: nullable columns without a default are catalogue changes; the
index is built on an empty predicate (no session has a chat yet), so it reads the table once
without writing; every lock wait is bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("sessions", "archived_sessions")

# The trigger functions as of this revision (a revision is self-contained); functions.sql,
# applied at head right after, holds the release's own definitions.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION sk_fill_archived_chat() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.chat_id INTO NEW.chat_id FROM sessions s WHERE s.session_id = NEW.session_id;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION sk_fill_restored_chat() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.chat_id INTO NEW.chat_id FROM archived_sessions a
    WHERE a.session_id = NEW.session_id;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in TABLES:
        op.add_column(table, sa.Column("chat_id", sa.Text(), nullable=True))
    op.execute(FUNCTIONS)
    op.execute(
        "CREATE TRIGGER tg_archived_sessions_chat_id BEFORE INSERT ON archived_sessions"
        " FOR EACH ROW WHEN (NEW.chat_id IS NULL) EXECUTE FUNCTION sk_fill_archived_chat()"
    )
    # Only a restored session (restored_at set) can have lost its chat to an old statement.
    op.execute(
        "CREATE TRIGGER tg_sessions_chat_id BEFORE INSERT ON sessions FOR EACH ROW"
        " WHEN (NEW.chat_id IS NULL AND NEW.restored_at IS NOT NULL)"
        " EXECUTE FUNCTION sk_fill_restored_chat()"
    )
    op.create_index(
        "ix_sessions_chat_id_last_active",
        "sessions",
        ["chat_id", sa.text("last_active DESC")],
        postgresql_where=sa.text("chat_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_index("ix_sessions_chat_id_last_active", table_name="sessions")
    op.execute("DROP TRIGGER IF EXISTS tg_sessions_chat_id ON sessions")
    op.execute("DROP TRIGGER IF EXISTS tg_archived_sessions_chat_id ON archived_sessions")
    for table in TABLES:
        op.drop_column(table, "chat_id")
    op.execute("DROP FUNCTION IF EXISTS sk_fill_archived_chat()")
    op.execute("DROP FUNCTION IF EXISTS sk_fill_restored_chat()")
