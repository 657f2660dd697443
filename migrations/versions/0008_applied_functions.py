"""applied_functions: which release's functions.sql the database runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

From this revision on, store/sql/functions.sql is applied by ``sessionkeeper migrate`` once the
database is at head. A one-row table records the release that applied it, so that ``migrate``
of an older release (a replica not yet rolled, migrating on start) does not put its older
functions back over the newer ones. A new, empty table: no lock on a hot table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "applied_functions",
        sa.Column("singleton", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column(
            "applied_at",
            TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("singleton", name="pk_applied_functions"),
        sa.CheckConstraint("singleton", name="ck_applied_functions_singleton"),
    )


def downgrade() -> None:
    op.drop_table("applied_functions")
