"""refusals that do not flood: how many requests each rate-limit window refused

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06

``rate_limits.refused_count`` (integer, NOT NULL, default 0): the requests of the window that a
cap refused. The first refusal of a window (the count going from 0 to 1, under the row lock the
rate check holds) is the one a bot answers; later ones are dropped quietly
(``sk_begin_turn_v5``, ``sk_check_rate_limit_v2``; docs/conversations.md, "Refusals").
``request_count`` keeps its meaning: a refused request counts against no cap.

Online-safe and expand-only: a column with a constant default is a catalogue change (no table
rewrite, no scan; added on the partitioned parent, every partition gets it). The lock wait is
bounded. Bots of release 0.2.0 neither read nor write the column; their refusals, decided by
the functions of this release, count in it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "rate_limits",
        sa.Column("refused_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_column("rate_limits", "refused_count")
