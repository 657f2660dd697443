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

The new bodies are 0002's with the edits spelt out below (each must apply exactly once), so
the difference stays readable; downgrade restores 0002's ``sk_begin_turn``. These bodies are a
versioned artefact: change them only by a new revision.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEGIN_TURN_SIGNATURE = (
    "sk_begin_turn(text, text, text, timestamptz, integer[], integer[], boolean, interval, "
    "integer, integer)"
)


def _revision_0002() -> Any:
    """Migration 0002's module (its file sits beside this one, installed or not)."""
    path = Path(__file__).with_name("0002_store_functions.py")
    spec = importlib.util.spec_from_file_location("_sessionkeeper_revision_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edited(body: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert body.count(old) == 1, f"0002's body changed; cannot apply: {old!r}"
        body = body.replace(old, new)
    return body


_PREVIOUS = _revision_0002()

# sk_history with parallel arrays in place of one JSONB document.
HISTORY_ARRAYS = _edited(
    _PREVIOUS.HISTORY,
    (
        "sk_history(p_session_id uuid, p_pairs integer) RETURNS jsonb",
        "sk_history_arrays(p_session_id uuid, p_pairs integer)\n"
        "RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[])",
    ),
    (
        """    SELECT coalesce(
        jsonb_agg(jsonb_build_object('seq', m.seq, 'role', m.role, 'content', m.content,
                                     'timestamp', m.created_at) ORDER BY m.seq),
        '[]'::jsonb)""",
        """    SELECT coalesce(array_agg(m.seq ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.seq), '{}')""",
    ),
)

BEGIN_TURN = _edited(
    _PREVIOUS.BEGIN_TURN,
    (
        "session_id uuid, session_created boolean, history jsonb",
        "session_id uuid, session_created boolean,\n"
        "    history_seqs bigint[], history_roles text[], history_contents text[],\n"
        "    history_created timestamptz[]",
    ),
    ("    v_user uuid;\n", "    v_user uuid;\n    v_authenticated boolean;\n"),
    (
        """    now := v_now;
    -- The seed's upsert; it also locks the user row until commit (see sk_current_session).
""",
        """    now := v_now;
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
""",
    ),
    (
        """    INTO v_user, person_id, display_name, user_created;
""",
        """    INTO v_user, person_id, display_name, user_created;
    END IF;
""",
    ),
    (
        "        history := sk_history(v_session, p_history_pairs);\n",
        """        SELECT h.seqs, h.roles, h.contents, h.created
        INTO history_seqs, history_roles, history_contents, history_created
        FROM sk_history_arrays(v_session, p_history_pairs) h;
""",
    ),
)


def upgrade() -> None:
    op.execute(HISTORY_ARRAYS)
    # The result's columns change, so the function is replaced, not redefined in place.
    op.execute(f"DROP FUNCTION {BEGIN_TURN_SIGNATURE}")
    op.execute(BEGIN_TURN)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {BEGIN_TURN_SIGNATURE}")
    op.execute(_PREVIOUS.BEGIN_TURN)
    op.execute("DROP FUNCTION sk_history_arrays(uuid, integer)")
