"""job_probes: the daemon's yield probe commits durably, as a bot's turn does

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06

One new table, nothing else touched (online-safe). While a job runs, the daemon's yield probe
(sessionkeeper.daemon.pacing) rewrites the job's row of ``job_probes`` and commits: a turn's
commit waits for the WAL flush, and that wait is what archival's writes make the bots feel
(their ``IO:WALSync`` waits four times the idle share in the jobs benchmark) while an index read,
the probe before, hardly moved. Keyed by job: two replicas never run one job at once, so the
probes of two replicas never wait on each other's row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_probes",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("probed_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_probes")),
    )


def downgrade() -> None:
    op.drop_table("job_probes")
