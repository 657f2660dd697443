"""store/sql/functions.sql is the current definition of every sk_* function in a database at head.

The reference is a scratch database that never ran a revision: its tables come from
store/schema.py (which test_migrations.py holds equal to the revisions) and its functions from
the file alone. A database migrated to head must hold exactly the same definitions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from store_support import T0

from sessionkeeper.admin import migrate
from sessionkeeper.admin.functions import (
    FunctionsApplyError,
    apply_functions,
    defined_functions,
    this_release,
)
from store import Store
from store.schema import metadata

# Every sk_* function and view of the public schema, by signature, with its full definition
# (pg_get_functiondef includes the result type, language, volatility and SET options).
_DEFINITIONS = r"""
SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sk\_%'
UNION ALL
SELECT 'view ' || c.relname, pg_get_viewdef(c.oid)
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
  AND c.relname LIKE 'sk\_%'
"""


def definitions(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return definitions_on(conn)


def definitions_on(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(conn.execute(_DEFINITIONS).fetchall())


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The objects that are missing, extra or defined differently in ``actual``."""
    return sorted(
        name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name)
    )


def apply_in_transaction(url: str) -> None:
    with psycopg.connect(url) as conn:
        apply_functions(conn)


@pytest.fixture
def reference(empty_database_url: str) -> dict[str, str]:
    """The definitions the file alone produces, on head's tables, with no revision run."""
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(empty_database_url)
    )
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    apply_in_transaction(empty_database_url)
    return definitions(empty_database_url)


def _replace_body(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    """Redefine sk_history_arrays with ``old`` in its body replaced by ``new``."""
    row = conn.execute(
        "SELECT pg_get_functiondef('sk_history_arrays(uuid, integer)'::regprocedure)"
    ).fetchone()
    assert row is not None and old in row[0]
    conn.execute(row[0].replace(old, new))


def test_database_at_head_equals_functions_sql(
    database_url: str, reference: dict[str, str]
) -> None:
    at_head = definitions(database_url)
    assert differences(reference, at_head) == []
    # Every function the store and jobs call is there (the reference is not trivially empty).
    names = {name.split(" ", 1)[1].split("(", 1)[0] for name in at_head}
    assert {
        "sk_begin_turn",
        "sk_check_rate_limit",
        "sk_current_session",
        "sk_history_arrays",
        "sk_redeem_link_code",
        "sk_forget",
        "sk_proactive_candidates",
    } <= names


def test_no_function_in_the_database_is_missing_from_the_file(database_url: str) -> None:
    # Functions kept for earlier releases are defined in the file too ("Kept for earlier
    # releases"), so the database holds nothing the file does not name.
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            r"SELECT DISTINCT proname FROM pg_proc"
            r" WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'sk\_%'"
        ).fetchall()
    assert {name for (name,) in rows} == defined_functions()


def test_begin_turn_keeps_its_generic_plans(database_url: str) -> None:
    # Revision 0006 set it with ALTER FUNCTION; the file must carry it, or CREATE OR REPLACE
    # would have reset it.
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'sk_begin_turn'")
        # ... beside the search_path every function has pinned (harden_functions).
        assert row.fetchone() == (
            ["plan_cache_mode=force_generic_plan", "search_path=public, pg_temp"],
        )


def test_comparison_names_a_function_whose_body_differs(
    database_url: str, reference: dict[str, str]
) -> None:
    # Guards the guard: a changed body (here a changed comment) is a difference, by name.
    with psycopg.connect(database_url) as conn:
        _replace_body(conn, "oldest first", "oldest first (altered)")
    assert differences(reference, definitions(database_url)) == [
        "function sk_history_arrays(uuid,integer)"
    ]


def test_comparison_names_a_lost_setting_and_a_stray_function(
    database_url: str, reference: dict[str, str]
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "ALTER FUNCTION sk_begin_turn(text, text, text, timestamptz, integer[], integer[],"
            " boolean, interval, integer, integer) RESET plan_cache_mode"
        )
        conn.execute("CREATE FUNCTION sk_stray() RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    found = differences(reference, definitions(database_url))
    assert len(found) == 2
    assert found[0].startswith("function sk_begin_turn(")
    assert found[1] == "function sk_stray()"


def test_migrate_with_nothing_pending_installs_a_changed_body(database_url: str) -> None:
    # A release that changes only a function body has no revision: migrate still applies it.
    expected = definitions(database_url)
    with psycopg.connect(database_url) as conn:
        _replace_body(conn, "oldest first", "an older release's body")
    assert differences(expected, definitions(database_url)) != []
    assert migrate.current_revision(database_url) == migrate.head_revision()
    migrate.upgrade(database_url)
    assert differences(expected, definitions(database_url)) == []


def test_downgrade_does_not_apply_the_file(database_url: str) -> None:
    at_head = definitions(database_url)
    migrate.downgrade(database_url, "0006")
    below_head = definitions(database_url)
    # 0007's downgrade restored 0002's rate check; the file (written for head) was not applied
    # over it.
    rate = "function sk_check_rate_limit(uuid,timestamp with time zone,integer[],integer[],boolean)"
    assert below_head[rate] != at_head[rate]
    assert "cardinality(p_windows) = 1" not in below_head[rate]
    migrate.upgrade(database_url)
    assert differences(at_head, definitions(database_url)) == []


def test_a_changed_result_type_is_refused_and_changes_nothing(database_url: str) -> None:
    # The point of CREATE OR REPLACE: a function whose result changes needs a new name.
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP FUNCTION sk_history(uuid, integer)")
        conn.execute(
            "CREATE FUNCTION sk_history(p_session_id uuid, p_pairs integer) RETURNS text"
            " LANGUAGE sql AS 'SELECT NULL::text'"
        )
    before = definitions(database_url)
    with psycopg.connect(database_url) as conn, pytest.raises(FunctionsApplyError) as refused:
        apply_functions(conn)
    assert "cannot change return type" in str(refused.value)
    assert "_v2" in str(refused.value)
    assert definitions(database_url) == before


def test_applying_twice_is_a_no_op(database_url: str, reference: dict[str, str]) -> None:
    apply_in_transaction(database_url)
    apply_in_transaction(database_url)
    migrate.upgrade(database_url)
    assert differences(reference, definitions(database_url)) == []


def test_a_bot_keeps_working_while_the_file_is_applied(database_url: str) -> None:
    with Store(database_url, max_size=1, statement_timeout_ms=2000) as bot:
        # Enough turns for psycopg to prepare the statements (prepare_threshold 5).
        for i in range(6):
            turn = bot.begin_turn("telegram", "42", now=T0 + timedelta(seconds=i))
            bot.finish_turn(turn, f"question {i}", f"answer {i}", now=T0 + timedelta(seconds=i))
        with psycopg.connect(database_url) as migrator:
            apply_functions(migrator)
            # Uncommitted replacement: the bot neither waits for it nor sees it.
            during = bot.begin_turn("telegram", "42", now=T0 + timedelta(seconds=10))
            assert during.allowed
            assert [m.content for m in during.history][-2:] == ["question 5", "answer 5"]
            migrator.commit()
        # Committed: the bot's prepared statements and cached plans follow the new definitions.
        bot.finish_turn(during, "question 6", "answer 6", now=T0 + timedelta(seconds=11))
        after = bot.begin_turn("telegram", "42", now=T0 + timedelta(seconds=12))
        assert after.session_id == during.session_id
        assert [m.content for m in after.history][-2:] == ["question 6", "answer 6"]
        migrate.upgrade(database_url)
        last = bot.begin_turn("telegram", "42", now=T0 + timedelta(seconds=13))
        assert last.allowed and len(last.history) == 14


def test_proactive_candidates_is_inlined_into_the_jobs_keyset_batch(database_url: str) -> None:
    # Inlined (plain SQL, STABLE, not STRICT), the keyset condition becomes a condition of the
    # scan of users; a function scan would compute every candidate for each batch.
    with psycopg.connect(database_url) as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT c.user_id, c.chat_id FROM sk_proactive_candidates('telegram') c"
                " WHERE c.user_id > '00000000-0000-0000-0000-000000000000'"
                " ORDER BY c.user_id LIMIT 500"
            )
        )
    assert "Function Scan" not in plan
    assert "on users u" in plan


def test_an_older_release_leaves_newer_functions_in_place(database_url: str) -> None:
    """A replica of the previous release that migrates on start must not put its older
    functions back: expand/contract means the newer ones serve it."""
    with psycopg.connect(database_url) as conn:
        recorded = conn.execute("SELECT release, sha256 FROM applied_functions").fetchone()
        assert recorded is not None and recorded[0] == this_release()
        conn.execute("UPDATE applied_functions SET release = '99.0.0'")
        _replace_body(conn, "ORDER BY", "ORDER  BY")
        changed = definitions_on(conn)
        assert apply_functions(conn, release="0.2.0") is False
        assert definitions_on(conn) == changed
        # The newer release itself does apply (and records itself).
        assert apply_functions(conn, release="99.0.0") is True
        assert definitions_on(conn) != changed
        assert conn.execute("SELECT release FROM applied_functions").fetchone() == ("99.0.0",)


_BEGIN_TURN = "SELECT * FROM {}('telegram', %s, NULL, %s, %s, %s, true, '30 minutes', 1, 20)"


def _begin(conn: psycopg.Connection[Any], name: str, user: str, at: Any, caps: list[int]) -> Any:
    windows = [60, 3600, 86400][: len(caps)]
    return conn.execute(_BEGIN_TURN.format(name), (user, at, windows, caps)).fetchone()


def test_begin_turn_v3_decides_as_the_functions_it_folds_in(database_url: str) -> None:
    # sk_begin_turn_v3 runs the one-cap rate check and the active-session lookup in its own
    # body; sk_check_rate_limit and sk_current_session (which v2's body called) must agree.
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = _begin(conn, "sk_begin_turn_v3", "u1", T0, [2])
        user_id, session_id = first[0], first[8]
        assert first[3] and first[5] and first[9]  # created, allowed, new session
        again = _begin(conn, "sk_begin_turn_v3", "u1", T0 + timedelta(seconds=5), [2])
        assert (again[5], again[8], again[9]) == (True, session_id, False)
        refused = _begin(conn, "sk_begin_turn_v3", "u1", T0 + timedelta(seconds=6), [2])
        checked = conn.execute(
            "SELECT * FROM sk_check_rate_limit(%s, %s, '{60}', '{2}', true)",
            (user_id, T0 + timedelta(seconds=6)),
        ).fetchone()
        assert refused[5:8] == checked == (False, T0 + timedelta(seconds=30), 60)
        assert refused[8] is None  # a refused turn opens no session and reads no history
        # Idle past 30 minutes: a new session, as sk_current_session opens it.
        later = _begin(conn, "sk_begin_turn_v3", "u1", T0 + timedelta(hours=1), [100, 1000])
        assert later[5] and later[9] and later[8] != session_id
        current = conn.execute(
            "SELECT * FROM sk_current_session(%s, %s, '30 minutes', 1)",
            (user_id, T0 + timedelta(hours=1)),
        ).fetchone()
        assert current == (later[8], False)
