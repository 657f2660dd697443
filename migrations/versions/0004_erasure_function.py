"""erasure function: forget a user or a person in one transaction

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Why a function: erasure must see rows that a concurrent usage rollup commits while erasure
waits for its locks. In PL/pgSQL every statement takes a fresh snapshot (READ COMMITTED), so
the daily totals are re-keyed after the raw usage rows were deleted, including totals the
rollup added meanwhile. A single statement with data-modifying CTEs would miss them.

This body is a versioned artefact: change it only by a new revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FORGET = """
CREATE FUNCTION sk_forget(p_user_id uuid, p_person_id uuid)
RETURNS TABLE (table_name text, action text, row_count bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- Usage totals outlive the user under this id, as anonymous aggregates.
    v_anonymous CONSTANT uuid := '00000000-0000-0000-0000-000000000000';
    v_users uuid[];
    v_persons uuid[];
    v_n bigint;
BEGIN
    -- Locking the users first makes concurrent inserts that reference them (a new session,
    -- usage, a link code) wait, and then fail on the foreign key.
    IF p_person_id IS NOT NULL THEN
        PERFORM 1 FROM persons WHERE person_id = p_person_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_persons := ARRAY[p_person_id];
        SELECT coalesce(array_agg(user_id), '{}') INTO v_users
        FROM (SELECT user_id FROM users WHERE person_id = p_person_id
              ORDER BY user_id FOR UPDATE) u;
    ELSE
        SELECT array_agg(user_id), array_agg(person_id) FILTER (WHERE person_id IS NOT NULL)
        INTO v_users, v_persons
        FROM (SELECT user_id, person_id FROM users WHERE user_id = p_user_id FOR UPDATE) u;
        IF v_users IS NULL THEN
            RETURN;
        END IF;
    END IF;

    BEGIN
        WITH d AS (DELETE FROM session_messages m USING sessions s
                   WHERE m.session_id = s.session_id AND s.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'session_messages', 'deleted', v_n;
        WITH d AS (DELETE FROM sessions WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'sessions', 'deleted', v_n;
        WITH d AS (DELETE FROM archived_session_messages m USING archived_sessions s
                   WHERE m.session_id = s.session_id AND s.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'archived_session_messages', 'deleted', v_n;
        WITH d AS (DELETE FROM archived_sessions WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'archived_sessions', 'deleted', v_n;
        WITH d AS (DELETE FROM legacy_quarantined_messages WHERE user_id = ANY(v_users)
                   RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'legacy_quarantined_messages', 'deleted', v_n;
        -- Codes the user made, and codes of others it redeemed (they name it).
        WITH d AS (DELETE FROM link_codes
                   WHERE user_id = ANY(v_users) OR used_by = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'link_codes', 'deleted', v_n;
        WITH d AS (DELETE FROM link_code_failures WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'link_code_failures', 'deleted', v_n;
        WITH d AS (DELETE FROM rate_limits WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'rate_limits', 'deleted', v_n;
        WITH d AS (DELETE FROM proactive_users WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'proactive_users', 'deleted', v_n;
        WITH d AS (DELETE FROM proactive_user_list WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'proactive_user_list', 'deleted', v_n;
        -- Raw usage goes; what the rollup has not counted yet is added to the anonymous daily
        -- totals first (UTC days, as the rollup counts).
        WITH d AS (DELETE FROM usage_stats WHERE user_id = ANY(v_users) RETURNING *),
        folded AS (
            INSERT INTO usage_daily AS t (day, user_id, channel, requests, input_tokens,
                                          output_tokens, cached_tokens, updated_at)
            SELECT (created_at AT TIME ZONE 'UTC')::date, v_anonymous, channel, count(*),
                   sum(input_tokens), sum(output_tokens), sum(cached_tokens), now()
            FROM d WHERE NOT rolled_up GROUP BY 1, 3
            ON CONFLICT (day, user_id, channel) DO UPDATE
                SET requests = t.requests + EXCLUDED.requests,
                    input_tokens = t.input_tokens + EXCLUDED.input_tokens,
                    output_tokens = t.output_tokens + EXCLUDED.output_tokens,
                    cached_tokens = t.cached_tokens + EXCLUDED.cached_tokens,
                    updated_at = EXCLUDED.updated_at
        )
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'usage_stats', 'deleted', v_n;
        -- The user's daily totals are merged into the anonymous ones.
        WITH d AS (DELETE FROM usage_daily WHERE user_id = ANY(v_users) RETURNING *),
        merged AS (
            INSERT INTO usage_daily AS t (day, user_id, channel, requests, input_tokens,
                                          output_tokens, cached_tokens, updated_at)
            SELECT day, v_anonymous, channel, sum(requests), sum(input_tokens),
                   sum(output_tokens), sum(cached_tokens), now()
            FROM d GROUP BY day, channel
            ON CONFLICT (day, user_id, channel) DO UPDATE
                SET requests = t.requests + EXCLUDED.requests,
                    input_tokens = t.input_tokens + EXCLUDED.input_tokens,
                    output_tokens = t.output_tokens + EXCLUDED.output_tokens,
                    cached_tokens = t.cached_tokens + EXCLUDED.cached_tokens,
                    updated_at = EXCLUDED.updated_at
        )
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'usage_daily', 'anonymised', v_n;
        WITH d AS (DELETE FROM users WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'users', 'deleted', v_n;
        -- A person goes when it has no user left (a forgotten person always).
        WITH d AS (DELETE FROM persons p WHERE p.person_id = ANY(v_persons)
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.person_id = p.person_id)
                   RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'persons', 'deleted', v_n;
    EXCEPTION WHEN foreign_key_violation THEN
        -- A table sessionkeeper does not own (another subsystem's) still references the
        -- user: everything above is rolled back, and the caller is told which constraint.
        RETURN QUERY SELECT 'blocked', SQLERRM, 0::bigint;
    END;
END $$
"""


def upgrade() -> None:
    op.execute(FORGET)


def downgrade() -> None:
    op.execute("DROP FUNCTION sk_forget(uuid, uuid)")
