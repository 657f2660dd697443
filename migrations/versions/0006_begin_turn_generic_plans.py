"""begin_turn plans once: sk_begin_turn runs with plan_cache_mode = force_generic_plan

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

PL/pgSQL caches a plan per statement, but by default (``plan_cache_mode = auto``) a statement
with parameters is planned afresh on every call whenever the generic plan's cost estimate comes
out higher than the custom plans' average, and measured, ``begin_turn`` paid for it. Every
statement it runs (and the functions it calls, which inherit the setting) looks
rows up by key or takes an index range of one user or session, for which the generic plan is
the plan. Measured on PostgreSQL 15, one connection, 40-message history, 3 interleaved pairs
of 5 x 1,000 turns (begin_turn and finish_turn): 1.31 / 1.35 / 1.29 -> 1.17 / 1.19 / 1.25 ms
per turn (medians). A function setting, not a connection option, so it holds behind PgBouncer too.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEGIN_TURN = (
    "sk_begin_turn(text, text, text, timestamptz, integer[], integer[], boolean, interval, "
    "integer, integer)"
)


def upgrade() -> None:
    op.execute(f"ALTER FUNCTION {BEGIN_TURN} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    op.execute(f"ALTER FUNCTION {BEGIN_TURN} RESET plan_cache_mode")
