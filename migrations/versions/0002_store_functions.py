"""store functions: the server-side steps of the hot path and of link-code redemption

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Why functions: ``begin_turn`` must upsert the user, decide the rate limit, find or open the
current session and read its history in one round trip, and stay race-free. A single statement
with data-modifying CTEs cannot do it: all its parts share one snapshot, so a request that waited
for a concurrent first message's lock would not see the session that message opened and would
open a second one. In PL/pgSQL every statement takes a fresh snapshot (READ COMMITTED), so after
the user row's lock is granted the later statements see what the lock holder committed.

These bodies are a versioned artefact: change them only by a new revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK_RATE_LIMIT = """
CREATE FUNCTION sk_check_rate_limit(
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

CURRENT_SESSION = """
CREATE FUNCTION sk_current_session(
    p_user_id uuid, p_now timestamptz, p_idle interval, p_carry_pairs integer
) RETURNS TABLE (session_id uuid, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_previous uuid;
    v_last_active timestamptz;
    v_new uuid;
    v_carried bigint;
BEGIN
    -- The user's row lock serialises the choice: concurrent first messages queue here, and as
    -- each statement below takes a fresh snapshot, the later ones find the session the first
    -- one opened.
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'user ' || p_user_id || ' does not exist';
    END IF;
    SELECT s.session_id, s.last_active INTO v_previous, v_last_active
    FROM sessions s WHERE s.user_id = p_user_id
    ORDER BY s.last_active DESC LIMIT 1;
    IF v_previous IS NOT NULL AND v_last_active > v_now - p_idle THEN
        session_id := v_previous;
        created := false;
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO sessions AS s (user_id, created_at, last_active)
    VALUES (p_user_id, v_now, v_now) RETURNING s.session_id INTO v_new;
    IF v_previous IS NOT NULL AND p_carry_pairs > 0 THEN
        -- Intermittent chatters keep context: the newest pairs of the stale session come along.
        INSERT INTO session_messages (session_id, seq, role, content, created_at)
        SELECT v_new, row_number() OVER (ORDER BY m.seq) - 1, m.role, m.content, m.created_at
        FROM (
            SELECT x.seq, x.role, x.content, x.created_at FROM session_messages x
            WHERE x.session_id = v_previous ORDER BY x.seq DESC LIMIT 2 * p_carry_pairs
        ) m;
        GET DIAGNOSTICS v_carried = ROW_COUNT;
        UPDATE sessions s SET next_seq = v_carried WHERE s.session_id = v_new;
    END IF;
    session_id := v_new;
    created := true;
    RETURN NEXT;
END $$
"""

HISTORY = """
CREATE FUNCTION sk_history(p_session_id uuid, p_pairs integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(
        jsonb_agg(jsonb_build_object('seq', m.seq, 'role', m.role, 'content', m.content,
                                     'timestamp', m.created_at) ORDER BY m.seq),
        '[]'::jsonb)
    FROM (
        SELECT x.seq, x.role, x.content, x.created_at FROM session_messages x
        WHERE x.session_id = p_session_id ORDER BY x.seq DESC LIMIT 2 * p_pairs
    ) m
$$
"""

BEGIN_TURN = """
CREATE FUNCTION sk_begin_turn(
    p_channel text, p_channel_user_id text, p_display_name text, p_now timestamptz,
    p_windows integer[], p_caps integer[], p_durable boolean,
    p_idle interval, p_carry_pairs integer, p_history_pairs integer
) RETURNS TABLE (
    user_id uuid, person_id uuid, display_name text, user_created boolean, now timestamptz,
    allowed boolean, retry_at timestamptz, refused_window integer,
    session_id uuid, session_created boolean, history jsonb
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_user uuid;
    v_session uuid;
BEGIN
    now := v_now;
    -- The seed's upsert; it also locks the user row until commit (see sk_current_session).
    INSERT INTO users AS u (channel, channel_user_id, display_name, authenticated,
                            created_at, updated_at)
    VALUES (p_channel, p_channel_user_id, p_display_name, true, v_now, v_now)
    ON CONFLICT (channel, channel_user_id) DO UPDATE
    SET authenticated = true, updated_at = v_now,
        display_name = coalesce(EXCLUDED.display_name, u.display_name)
    RETURNING u.user_id, u.person_id, u.display_name, u.xmax = 0
    INTO v_user, person_id, display_name, user_created;
    user_id := v_user;
    SELECT d.allowed, d.retry_at, d.refused_window INTO allowed, retry_at, refused_window
    FROM sk_check_rate_limit(v_user, v_now, p_windows, p_caps, p_durable) d;
    IF allowed THEN
        -- A refused request opens no session and reads no history.
        SELECT c.session_id, c.created INTO v_session, session_created
        FROM sk_current_session(v_user, v_now, p_idle, p_carry_pairs) c;
        session_id := v_session;
        history := sk_history(v_session, p_history_pairs);
    END IF;
    RETURN NEXT;
END $$
"""

REDEEM_LINK_CODE = """
CREATE FUNCTION sk_redeem_link_code(
    p_user_id uuid, p_code text, p_now timestamptz,
    p_max_failures integer, p_failure_window interval, p_lockout interval
) RETURNS TABLE (outcome text, person_id uuid, owner_id uuid, locked_until timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_code link_codes;
    v_failures link_code_failures;
    v_outcome text;
    v_owner_person uuid;
    v_user_person uuid;
    v_person uuid;
BEGIN
    -- Redemptions are rare; one at a time means person merges never interleave or deadlock,
    -- and a code raced for by many users is redeemed once.
    -- The key is "sk-link" in ASCII.
    PERFORM pg_advisory_xact_lock(32487465158274667);
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'user ' || p_user_id || ' does not exist';
    END IF;
    SELECT * INTO v_failures FROM link_code_failures f WHERE f.user_id = p_user_id;
    IF v_failures.locked_until > v_now THEN
        -- Locked out, even with the right code: guessing must not pay.
        RETURN QUERY SELECT 'locked', NULL::uuid, NULL::uuid, v_failures.locked_until;
        RETURN;
    END IF;
    SELECT * INTO v_code FROM link_codes c WHERE c.code = p_code;
    IF FOUND AND v_code.user_id = p_user_id THEN
        RETURN QUERY SELECT 'own', NULL::uuid, NULL::uuid, NULL::timestamptz;
        RETURN;
    ELSIF NOT FOUND OR v_code.used_at IS NOT NULL THEN
        v_outcome := 'invalid';
    ELSIF v_code.expires_at <= v_now THEN
        v_outcome := 'expired';
    END IF;
    IF v_outcome IS NOT NULL THEN
        -- Count the failure in a window; reaching the cap locks the user out and starts afresh.
        INSERT INTO link_code_failures AS f (user_id, window_start, failures)
        VALUES (p_user_id, v_now, 1)
        ON CONFLICT (user_id) DO UPDATE SET
            window_start = CASE WHEN f.window_start <= v_now - p_failure_window
                                THEN v_now ELSE f.window_start END,
            failures = CASE WHEN f.window_start <= v_now - p_failure_window
                            THEN 1 ELSE f.failures + 1 END
        RETURNING * INTO v_failures;
        IF v_failures.failures >= p_max_failures THEN
            UPDATE link_code_failures f
            SET locked_until = v_now + p_lockout, failures = 0, window_start = v_now
            WHERE f.user_id = p_user_id
            RETURNING * INTO v_failures;
        END IF;
        RETURN QUERY SELECT v_outcome, NULL::uuid, NULL::uuid, v_failures.locked_until;
        RETURN;
    END IF;
    UPDATE link_codes c SET used_at = v_now, used_by = p_user_id WHERE c.code = p_code;
    SELECT u.person_id INTO v_owner_person FROM users u WHERE u.user_id = v_code.user_id;
    SELECT u.person_id INTO v_user_person FROM users u WHERE u.user_id = p_user_id;
    v_person := coalesce(v_owner_person, v_user_person);
    IF v_person IS NULL THEN
        INSERT INTO persons AS p (created_at) VALUES (v_now) RETURNING p.person_id INTO v_person;
    END IF;
    -- Both users and every user of either's person end up under one person. A person left
    -- without users stays (nothing is deleted on the online path).
    UPDATE users u SET person_id = v_person, updated_at = v_now
    WHERE u.user_id IN (v_code.user_id, p_user_id)
       OR u.person_id IN (v_owner_person, v_user_person);
    UPDATE link_code_failures f SET failures = 0, window_start = v_now
    WHERE f.user_id = p_user_id;
    RETURN QUERY SELECT 'linked', v_person, v_code.user_id, NULL::timestamptz;
END $$
"""

FUNCTIONS = {
    "sk_check_rate_limit(uuid, timestamptz, integer[], integer[], boolean)": CHECK_RATE_LIMIT,
    "sk_current_session(uuid, timestamptz, interval, integer)": CURRENT_SESSION,
    "sk_history(uuid, integer)": HISTORY,
    "sk_begin_turn(text, text, text, timestamptz, integer[], integer[], boolean, interval, "
    "integer, integer)": BEGIN_TURN,
    "sk_redeem_link_code(uuid, text, timestamptz, integer, interval, interval)": REDEEM_LINK_CODE,
}


def upgrade() -> None:
    for body in FUNCTIONS.values():
        op.execute(body)


def downgrade() -> None:
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION {signature}")
