"""rate limit in one write: with a single cap, sk_check_rate_limit counts in one upsert

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

0002's check upserts every window (a no-op update, to lock the row and read its count) and
then raises the counts in a second statement: two new versions of a ``rate_limits`` row per
message. With one cap (the default: 15 a minute) a single upsert that raises the count only
below the cap decides, counts and locks at once; a refused request still counts against
nothing. Several caps keep 0002's two steps (a request refused by any cap counts against none).
The body is 0002's with that branch added (see 0005 for the editing helpers).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _revision_0005() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_sessionkeeper_revision_0005", Path(__file__).with_name("0005_lean_begin_turn.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LEAN = _revision_0005()
PREVIOUS = _LEAN._edited(
    _LEAN._PREVIOUS.CHECK_RATE_LIMIT, ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
)
CHECK_RATE_LIMIT = _LEAN._edited(
    PREVIOUS,
    (
        "    -- Upserting every window (aligned",
        """    IF cardinality(p_windows) = 1 AND p_caps[1] > 0 THEN
        -- One cap: one upsert counts the request unless the cap is reached, and locks the
        -- window's row either way (concurrent checks of one user queue up).
        INSERT INTO rate_limits AS r (user_id, window_seconds, window_start, request_count)
        VALUES (p_user_id, p_windows[1],
                to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1]) * p_windows[1]), 1)
        ON CONFLICT (user_id, window_seconds, window_start)
        DO UPDATE SET request_count = r.request_count + 1 WHERE r.request_count < p_caps[1];
        allowed := FOUND;
        IF NOT allowed THEN
            refused_window := p_windows[1];
            retry_at := to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1])
                                     * p_windows[1]) + make_interval(secs => p_windows[1]);
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    -- Upserting every window (aligned""",
    ),
)


def upgrade() -> None:
    op.execute(CHECK_RATE_LIMIT)


def downgrade() -> None:
    op.execute(PREVIOUS)
