"""lean begin_turn: write the user row only when it changes, return the history as arrays

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Two costs of ``sk_begin_turn`` (0002) that every message paid, measured in bench/RESULTS.md:

- The seed's upsert wrote a new version of the user row on every message (``updated_at``,
  ``authenticated``). Now the row is read and locked first (``FOR NO KEY UPDATE``, the lock the
  upsert took, so the race-safety argument of 0002 is unchanged) and written only when something
  changes: a new user, ``authenticated`` false -> true, or a new ``display_name``. ``updated_at``
  is therefore the last change of the row; a user's last activity is ``sessions.last_active``.
- The history came back as one JSONB document (built per message on the server, parsed and its
  timestamps re-parsed on the client). It now comes back as four parallel arrays (seq, role,
  content, created_at) in the same single row: ``sk_history_arrays``, which ``get_history``
  uses too. ``sk_history`` (JSONB) stays for callers of the 0002 function.

The new bodies are written out in full; downgrade restores 0002's ``sk_begin_turn``. These
bodies are a versioned artefact: change them only by a new revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from sessionkeeper.admin.migrate import revision_module

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEGIN_TURN_SIGNATURE = (
    "sk_begin_turn(text, text, text, timestamptz, integer[], integer[], boolean, interval, "
    "integer, integer)"
)


# Restored by downgrade.
_PREVIOUS = revision_module("0002_store_functions.py")

# sk_history with parallel arrays in place of one JSONB document.
HISTORY_ARRAYS = """
CREATE FUNCTION sk_history_arrays(p_session_id uuid, p_pairs integer)
RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[])
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(array_agg(m.seq ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.seq), '{}')
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
    session_id uuid, session_created boolean,
    history_seqs bigint[], history_roles text[], history_contents text[],
    history_created timestamptz[]
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_user uuid;
    v_authenticated boolean;
    v_session uuid;
BEGIN
    now := v_now;
    user_created := false;
    -- Lock the user row until commit, as the seed's upsert did (see sk_current_session), but
    -- write it only when something changes: most messages come from a known, authenticated
    -- user with no new display name, and then nothing is written here.
    SELECT u.user_id, u.person_id, u.display_name, u.authenticated
    INTO v_user, person_id, display_name, v_authenticated
    FROM users u WHERE u.channel = p_channel AND u.channel_user_id = p_channel_user_id
    FOR NO KEY UPDATE;
    IF v_user IS NULL OR NOT v_authenticated
       OR display_name IS DISTINCT FROM coalesce(p_display_name, display_name) THEN
    -- A new user (concurrent first messages meet in the unique index) or a change: the
    -- upsert of 0002, unchanged.
    INSERT INTO users AS u (channel, channel_user_id, display_name, authenticated,
                            created_at, updated_at)
    VALUES (p_channel, p_channel_user_id, p_display_name, true, v_now, v_now)
    ON CONFLICT (channel, channel_user_id) DO UPDATE
    SET authenticated = true, updated_at = v_now,
        display_name = coalesce(EXCLUDED.display_name, u.display_name)
    RETURNING u.user_id, u.person_id, u.display_name, u.xmax = 0
    INTO v_user, person_id, display_name, user_created;
    END IF;
    user_id := v_user;
    SELECT d.allowed, d.retry_at, d.refused_window INTO allowed, retry_at, refused_window
    FROM sk_check_rate_limit(v_user, v_now, p_windows, p_caps, p_durable) d;
    IF allowed THEN
        -- A refused request opens no session and reads no history.
        SELECT c.session_id, c.created INTO v_session, session_created
        FROM sk_current_session(v_user, v_now, p_idle, p_carry_pairs) c;
        session_id := v_session;
        SELECT h.seqs, h.roles, h.contents, h.created
        INTO history_seqs, history_roles, history_contents, history_created
        FROM sk_history_arrays(v_session, p_history_pairs) h;
    END IF;
    RETURN NEXT;
END $$
"""


def upgrade() -> None:
    op.execute(HISTORY_ARRAYS)
    # The result's columns change, so the function is replaced, not redefined in place.
    op.execute(f"DROP FUNCTION {BEGIN_TURN_SIGNATURE}")
    op.execute(BEGIN_TURN)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {BEGIN_TURN_SIGNATURE}")
    op.execute(_PREVIOUS.BEGIN_TURN)
    op.execute("DROP FUNCTION sk_history_arrays(uuid, integer)")
