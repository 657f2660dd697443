"""rate limit in one write: with a single cap, sk_check_rate_limit counts in one upsert

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

0002's check upserts every window (a no-op update, to lock the row and read its count) and
then raises the counts in a second statement: two new versions of a ``rate_limits`` row per
message. With one cap (the default: 15 a minute) a single upsert that raises the count only
below the cap decides, counts and locks at once; a refused request still counts against
nothing. Several caps keep 0002's two steps (a request refused by any cap counts against none).
The body is 0002's with that branch added, written out in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from sessionkeeper.admin.migrate import revision_module

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Restored by downgrade: 0002's body, replacing this one in place.
PREVIOUS = revision_module("0002_store_functions.py").CHECK_RATE_LIMIT.replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
)

CHECK_RATE_LIMIT = """
CREATE OR REPLACE FUNCTION sk_check_rate_limit(
    p_user_id uuid, p_now timestamptz, p_windows integer[], p_caps integer[], p_durable boolean
) RETURNS TABLE (allowed boolean, retry_at timestamptz, refused_window integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    IF NOT p_durable THEN
        -- A request counter is soft state: this commit need not wait for the WAL flush.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    IF cardinality(p_windows) = 1 AND p_caps[1] > 0 THEN
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
    -- Upserting every window (aligned to the epoch, so UTC days) locks its row in window order,
    -- so concurrent checks of one user queue up, and returns its latest count. Only when no cap
    -- is reached are the counts raised: a refused request counts against none of them.
    WITH windows AS (
        SELECT w.seconds, w.cap,
               to_timestamp(floor(extract(epoch FROM v_now) / w.seconds) * w.seconds) AS start
        FROM unnest(p_windows, p_caps) AS w(seconds, cap)
    ), counted AS (
        INSERT INTO rate_limits AS r (user_id, window_seconds, window_start, request_count)
        SELECT p_user_id, w.seconds, w.start, 0 FROM windows w ORDER BY w.seconds
        ON CONFLICT (user_id, window_seconds, window_start)
        DO UPDATE SET request_count = r.request_count
        RETURNING r.window_seconds, r.window_start, r.request_count
    )
    SELECT coalesce(bool_and(c.request_count < w.cap), true),
           max(c.window_start + make_interval(secs => c.window_seconds))
               FILTER (WHERE c.request_count >= w.cap),
           max(c.window_seconds) FILTER (WHERE c.request_count >= w.cap)
    INTO allowed, retry_at, refused_window
    FROM counted c JOIN windows w ON w.seconds = c.window_seconds;
    IF allowed THEN
        UPDATE rate_limits r SET request_count = r.request_count + 1
        WHERE r.user_id = p_user_id
          AND r.window_seconds = ANY (p_windows)
          AND r.window_start
              = to_timestamp(floor(extract(epoch FROM v_now) / r.window_seconds) * r.window_seconds);
    END IF;
    RETURN NEXT;
END $$
"""


def upgrade() -> None:
    op.execute(CHECK_RATE_LIMIT)


def downgrade() -> None:
    op.execute(PREVIOUS)
