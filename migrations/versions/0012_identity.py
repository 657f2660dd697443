"""identity and users' lifecycle: a restored session keeps its last activity

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

``sessions.restored_at``: when ``sessionkeeper sessions restore`` brought the session back from
the archive. A restored session keeps its ``last_active`` (it does not become the user's
current session); ``session_archival`` leaves it online for ``idle_seconds`` after its
restoration instead of archiving it again at once. A nullable column without a default: adding
it only changes the catalog, however many sessions there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("restored_at", postgresql.TIMESTAMP(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("sessions", "restored_at")
