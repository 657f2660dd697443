"""job_runs outcome 'stopped': a run ended early by Ctrl-C or a daemon shutdown

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

A run a stop request ended at a batch boundary used to be recorded as ``success`` (with
``"stopped": true`` in its details), which hid the work left. It is now ``stopped``. The check
constraint is replaced in one short transaction: ``job_runs`` is the small, pruned run ledger,
and only the daemon and the CLI write it (bots never touch it). Release 0.2.0's daemon never
writes ``stopped`` and reads any outcome, so it keeps working after this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As they are at this revision (a revision never reads the live schema module).
OUTCOMES = ("running", "success", "failure", "skipped", "stopped")
PREVIOUS_OUTCOMES = ("running", "success", "failure", "skipped")


def _replace_check(outcomes: Sequence[str]) -> None:
    allowed = ", ".join(f"'{outcome}'" for outcome in outcomes)
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("ALTER TABLE job_runs DROP CONSTRAINT ck_job_runs_outcome")
    op.execute(
        f"ALTER TABLE job_runs ADD CONSTRAINT ck_job_runs_outcome CHECK (outcome IN ({allowed}))"
    )


def upgrade() -> None:
    _replace_check(OUTCOMES)


def downgrade() -> None:
    # The previous release recorded a stopped run as a success flagged in its details.
    op.execute(
        "UPDATE job_runs SET outcome = 'success',"
        " details = coalesce(details, '{}'::jsonb) || '{\"stopped\": true}'"
        " WHERE outcome = 'stopped'"
    )
    _replace_check(PREVIOUS_OUTCOMES)
