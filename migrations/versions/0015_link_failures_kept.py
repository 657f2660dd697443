"""link-code failures: a daily count per account, kept through erasure

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

``link_code_failures.recent``: the times of the account's failed redemptions of the last 24
hours, so that the daily cap (``link_max_daily_failures``) counts failures over a sliding day:
pacing guesses under the per-window lock-out no longer earns more of them. A column with a
constant default: adding it only changes the catalog.

``link_code_erased_failures``: an erased account's failure record, keyed by a hash of its user
id and holding nothing else of it, until its day and lock-out are over (the link_code_expiry
job removes it). A user erased and back under the same id (ids are keyed hashes of the
channel identity) finds its lock-out still running.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.add_column(
        "link_code_failures",
        sa.Column("recent", postgresql.ARRAY(TSTZ), nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_table(
        "link_code_erased_failures",
        sa.Column("account_key", sa.Text, primary_key=True),
        sa.Column("window_start", TSTZ, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("locked_until", TSTZ),
        sa.Column("recent", postgresql.ARRAY(TSTZ), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    op.drop_table("link_code_erased_failures")
    op.drop_column("link_code_failures", "recent")
