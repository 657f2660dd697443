"""A deployment of release 0.1.0 or 0.2.0 (one login owning and doing everything) moves to the
role model without downtime (docs/roles.md, "Moving an existing deployment"):

1. ``sessionkeeper migrate`` of this release, as the old login, while the old bots write;
2. ``sessionkeeper roles setup``, as a superuser, while the old bots still write (the old login
   becomes a member of the owner role, so nothing it did is refused);
3. new bots, the daemon and migrate use their own logins.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import TEST_LOGINS, as_login, create_logins
from psycopg import sql
from store_support import T0
from test_roles import security
from upgrade_support import OLD, migrate_process, migrate_while_writing

from sessionkeeper.admin import migrate, roles
from sessionkeeper.jobs import partition_maintenance
from store import Store
from store.queries import parse

RELEASE_0_2_0 = parse(
    (
        Path(__file__).resolve().parent.parent / "fixtures" / "release-0.2.0" / "store_queries.sql"
    ).read_text(encoding="utf-8")
)
LEGACY = "sk_test_legacy"
WRITERS = 3


@pytest.fixture
def legacy_url(admin_url: str, empty_database_url: str) -> str:
    """The test's empty database as the one login of an old deployment (not a superuser)."""
    create_logins(admin_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        if not roles.role_exists(conn, LEGACY):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(LEGACY)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(LEGACY)))
    return as_login(empty_database_url, LEGACY)


def old_turn(statements: dict[str, str]) -> Any:
    def turn(conn: psycopg.Connection[Any], channel_user_id: str) -> None:
        row = conn.execute(
            statements["begin_turn"],
            {
                "channel": "telegram",
                "channel_user_id": channel_user_id,
                "display_name": None,
                "now": None,
                "windows": [60],
                "caps": [10**9],
                "durable": False,
                "idle": timedelta(minutes=30),
                "carry_pairs": 1,
                "history_pairs": 5,
            },
        ).fetchone()
        assert row is not None and row[5] is True  # allowed

    return turn


def roles_setup_process(url: str) -> Any:
    return migrate_process(
        url, "roles", "setup", *(f"--{kind}-login={login}" for kind, login in TEST_LOGINS.items())
    )


def old_usage(conn: psycopg.Connection[Any], channel_user_id: str) -> None:
    """Release 0.1.0's rate check and usage record, by a bot of that release."""
    user = conn.execute(
        "SELECT user_id FROM users WHERE channel_user_id = %s", (channel_user_id,)
    ).fetchone()
    assert user is not None
    allowed = conn.execute(
        OLD["check_rate_limit"],
        {"user_id": user[0], "now": None, "windows": [60], "caps": [10**9], "durable": False},
    ).fetchone()
    assert allowed is not None and allowed[0]
    conn.execute(
        OLD["track_usage"],
        {
            "user_id": user[0],
            "channel": "telegram",
            "input_tokens": 1,
            "output_tokens": 0,
            "cached_tokens": 0,
            "now": None,
        },
    )


def move_to_roles(
    empty_database_url: str, legacy_url: str, turn: Any, while_migrating: Any = None
) -> None:
    writers = [f"w{i}" for i in range(WRITERS)]
    with psycopg.connect(legacy_url, autocommit=True) as old:
        for writer in writers:
            turn(old, writer)
    # 1. This release's migrate, as the old login, while the old bots write.
    migrate_while_writing(legacy_url, while_migrating or turn, writers)
    # 2. The roles, by a superuser, while the old bots still write as the old login.
    migrate_while_writing(empty_database_url, turn, writers, action=roles_setup_process)
    # ... which keeps working (a member of owner now), as do the new logins.
    with psycopg.connect(legacy_url, autocommit=True) as old:
        turn(old, "w0")
    # The partitions of that day, made by the daemon (as the owner), as its job would.
    with psycopg.connect(as_login(empty_database_url, TEST_LOGINS["daemon"]), autocommit=True) as d:
        partition_maintenance.run(
            d, partition_maintenance.Settings(ahead=1), T0 + timedelta(days=400)
        )
    with Store(as_login(empty_database_url, TEST_LOGINS["bot"])) as bot:
        new = bot.begin_turn("telegram", "w1", now=T0 + timedelta(days=400))
        bot.finish_turn(new, "q", "a", now=T0 + timedelta(days=400))
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'S')"
        ).fetchall()
        assert owners == [("sessionkeeper_owner",)]
        assert roles.undeclared(conn) == []
        before = security(conn)
        # The secret is the owner's alone (a NULL ACL is the owner's default).
        assert before["table user_key_secret"][0] in (
            None,
            "{sessionkeeper_owner=arwdDxtm/sessionkeeper_owner}",
        )
        for kind in roles.KINDS:
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'user_key_secret', 'SELECT')",
                (f"sessionkeeper_{kind}",),
            ).fetchone() == (kind == "owner",)
    # 3. migrate by its own login changes nothing of it.
    migrate.upgrade(as_login(empty_database_url, TEST_LOGINS["owner"]))
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert security(conn) == before
    bot_url = as_login(empty_database_url, TEST_LOGINS["bot"])
    with psycopg.connect(bot_url) as bot, pytest.raises(psycopg.errors.InsufficientPrivilege):
        bot.execute("SELECT secret FROM user_key_secret")


@pytest.mark.slow
def test_a_release_0_1_0_deployment_moves_to_the_roles_while_its_bots_write(
    empty_database_url: str, legacy_url: str
) -> None:
    migrate.upgrade(legacy_url, "0007")  # release 0.1.0's head
    # While the revisions since 0.1.0 run, its bots check rates and record usage (its
    # begin_turn can deadlock with revision 0010's ALTER TABLE, which waits 5 s for its lock:
    # not this test's subject); while the roles are set up, they take whole turns.
    move_to_roles(empty_database_url, legacy_url, old_turn(OLD), old_usage)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()


_AS_RELEASE_0_2_0 = r"""
DO $$
DECLARE f regprocedure;
BEGIN
    -- Release 0.2.0's functions: PUBLIC's EXECUTE, no pinned search_path, no SECURITY DEFINER.
    FOR f IN SELECT oid FROM pg_proc
             WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'sk\_%'
    LOOP
        EXECUTE format('ALTER FUNCTION %s RESET search_path', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f);
    END LOOP;
    ALTER FUNCTION sk_user_key(text, text) SECURITY INVOKER;
    UPDATE applied_functions SET release = '0.2.0';
END $$
"""


@pytest.mark.slow
def test_a_release_0_2_0_deployment_moves_to_the_roles_while_its_bots_write(
    empty_database_url: str, legacy_url: str
) -> None:
    # 0.2.0's head is this release's schema (no revision since); its functions differ by the
    # hardening alone, and it had no grants.
    migrate.upgrade(legacy_url)
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        conn.execute(_AS_RELEASE_0_2_0)
        for name, kind in roles.schema_objects(conn).items():
            conn.execute(
                sql.SQL(
                    "REVOKE ALL ON {} {} FROM sessionkeeper_bot, sessionkeeper_daemon,"
                    " sessionkeeper_reader"
                ).format(
                    sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE"), sql.Identifier(name)
                )
            )
        assert conn.execute(
            "SELECT prosecdef FROM pg_proc WHERE proname = 'sk_user_key'"
        ).fetchone() == (False,)
    move_to_roles(empty_database_url, legacy_url, old_turn(RELEASE_0_2_0))
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute(
            "SELECT prosecdef FROM pg_proc WHERE proname = 'sk_user_key'"
        ).fetchone() == (True,)
