"""The role model (docs/roles.md): the bots, the daemon and the dashboards each connect as a
member of their group role and can do what they need and nothing more.

Every test database has the roles (conftest's template ran ``roles.setup``), with one login of
each kind: ``bot_url``, ``daemon_url``, ``reader_url``, and ``sk_test_migrate`` for migrate.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiogram.fsm.storage.base import StorageKey
from conftest import TEST_LOGINS, as_login, create_logins
from daemon_support import daemon_env, every_job
from fake_whatsapp import ADA, FakeCloudAPI, deliver, message_webhook
from fake_whatsapp import run as run_whatsapp
from langchain_core.messages import AIMessage, HumanMessage
from langgraph_support import agent_graph, user_turn
from partition_support import drop_calendar
from pywa_async.client import WhatsApp
from pywa_async.handlers import MessageHandler
from pywa_async.types.message import Message
from store_support import T0
from test_daemon import Daemon, wait_for
from upgrade_support import migrate_process

from sessionkeeper.admin import migrate, roles
from sessionkeeper.admin.functions import defined_functions
from sessionkeeper.jobs import JOB_NAMES
from sessionkeeper.jobs.registry import JOBS
from sessionkeeper.jobs.runner import run_job
from store import (
    AsyncStore,
    LinkCodeInvalid,
    NotFound,
    Operations,
    PermissionDenied,
    ProactiveUsers,
    Store,
    StoreError,
    Turn,
)
from store.client import Op
from store.integrations.aiogram import SessionkeeperStorage
from store.integrations.langchain import SessionkeeperChatMessageHistory
from store.integrations.langgraph import SessionkeeperSaver, thread_config
from store.integrations.telegram import SessionkeeperPersistence
from store.integrations.whatsapp import WhatsAppTurns

Conn = psycopg.Connection[tuple[Any, ...]]


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# -- declarations -------------------------------------------------------------------------------


def test_every_table_sequence_and_function_has_declared_grants(conn: Conn) -> None:
    # A table or function added without a line in sessionkeeper/admin/roles.py fails here.
    assert roles.undeclared(conn) == []
    # ... and nothing is declared that the schema does not have (a stale line).
    objects = roles.schema_objects(conn)
    functions = {name for name, _ in roles.schema_functions(conn)}
    assert set(roles.TABLES) - set(objects) == set()
    assert set(roles.SEQUENCES) - set(objects) == set()
    assert set(roles.FUNCTIONS) == functions


def test_a_new_table_without_declared_grants_is_named(conn: Conn) -> None:
    # Guards the guard.
    conn.execute("CREATE TABLE checkpoints (id bigint)")
    conn.execute("CREATE FUNCTION sk_new_thing() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert roles.undeclared(conn) == ["function sk_new_thing()", "table checkpoints"]


_FUNCTION_SECURITY = r"""
SELECT p.proname, p.prosecdef, pg_get_userbyid(p.proowner), p.proconfig,
       l.lanname || ' ' || p.provolatile::text,
       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_execute
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sk\_%'
"""


def function_security(conn: Conn) -> dict[str, tuple[Any, ...]]:
    return {row[0]: row[1:] for row in conn.execute(_FUNCTION_SECURITY).fetchall()}


def test_no_function_escapes_hardening(conn: Conn) -> None:
    security = function_security(conn)
    assert set(security) == defined_functions()
    unpinned = set()
    for name, (definer, owner, config, language, public_execute) in security.items():
        assert not public_execute, name
        assert owner == "sessionkeeper_owner", name
        if config is None:
            # Inlinable (plain SQL, not volatile, invoker's rights, no SET): inlined into the
            # caller's statement, it runs with the caller's privileges and path; a SET clause
            # would stop the inlining (see harden_functions).
            assert (definer, language) in {(False, "sql s"), (False, "sql i")}, name
            unpinned.add(name)
        else:
            assert "search_path=public, pg_temp" in config, name
    # The ones the plans rely on are among them (test_store_plans, test_sql_functions).
    assert {"sk_history_arrays_v3", "sk_proactive_candidates", "sk_capped_total"} <= unpinned
    assert "sk_begin_turn_v3" not in unpinned and "sk_user_key" not in unpinned
    # The one function that reads the secret runs as its owner.
    assert [name for name, row in security.items() if row[0]] == ["sk_user_key"]


# -- the bot ------------------------------------------------------------------------------------

Step = tuple[str, tuple[Any, ...], dict[str, Any]]


def every_store_call(out: io.StringIO) -> Generator[Step, Any, None]:
    """Every store operation once, as a bot makes them; each step is sent its result (or the
    StoreError it raised). Written once for Store and AsyncStore."""
    at = {"now": T0}
    turn = yield "begin_turn", ("telegram", 42), {"display_name": "Ada", **at}
    assert turn.rate.allowed and turn.session_id is not None
    yield "finish_turn", (turn, "hi", "hello"), {"input_tokens": 3, "output_tokens": 4, **at}
    other = yield "get_or_create_user", ("telegram", 43), at
    assert (yield "find_user", ("telegram", 43), {}).user_id == other.user_id
    session = yield "get_or_create_session", (other.user_id,), at
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    yield "append_messages", (session.session_id, messages + messages), at
    assert (yield "trim_session_history", (session.session_id,), {"max_pairs": 1}) == 2
    history = yield "get_history", (session.session_id,), {}
    assert [m.content for m in history] == ["a", "b"]
    assert (yield "clear_session_history", (session.session_id,), {}) == 2
    assert (yield "check_rate_limit", (other.user_id,), at).allowed
    yield "track_usage", (other.user_id, "telegram", 1, 2), at
    yield "register_proactive_user", (43, other.user_id), at
    assert "43" in {u.chat_id for u in (yield "load_users_from_db", (), {})}
    wrong = yield "redeem_link_code", (turn.user.user_id, "ABCD-EFGH-JKMN"), at
    assert isinstance(wrong, LinkCodeInvalid)
    code = yield "create_link_code", (other.user_id,), at
    linked = yield "redeem_link_code", (turn.user.user_id, code.code), at
    assert len((yield "get_linked_users", (turn.user.user_id,), {})) == 2
    yield "export_person", (linked.person_id, out), {}
    yield "export_user", (other.user_id, out), {}
    assert (yield "unlink", (turn.user.user_id,), at).person_id == linked.person_id
    assert (yield "forget_user", (turn.user.user_id,), {}).deleted["users"] == 1
    assert (yield "forget_person", (linked.person_id,), {}).deleted["users"] == 1
    yield "get_or_create_user", ("telegram", 44), at
    assert (yield "forget_channel_user", ("telegram", 44), {}).deleted["users"] == 1
    # No users row and nothing kept under it: both erasure paths ran.
    assert isinstance((yield "forget_channel_user", ("telegram", 45), {}), NotFound)


OPERATIONS = {name for name, value in vars(Operations).items() if isinstance(value, Op)}


def run_sync(db: Store, scenario: Generator[Step, Any, None]) -> set[str]:
    called: set[str] = set()
    result: Any = None
    try:
        while True:
            name, args, kwargs = scenario.send(result)
            called.add(name)
            try:
                result = getattr(db, name)(*args, **kwargs)
            except StoreError as exc:
                if isinstance(exc, PermissionDenied):
                    raise
                result = exc
    except StopIteration:
        return called


async def run_async(db: AsyncStore, scenario: Generator[Step, Any, None]) -> set[str]:
    called: set[str] = set()
    result: Any = None
    try:
        while True:
            name, args, kwargs = scenario.send(result)
            called.add(name)
            try:
                result = await getattr(db, name)(*args, **kwargs)
            except StoreError as exc:
                if isinstance(exc, PermissionDenied):
                    raise
                result = exc
    except StopIteration:
        return called


def test_every_store_call_runs_as_the_bot(bot_url: str, conn: Conn) -> None:
    out = io.StringIO()
    with Store(bot_url) as db:
        called = run_sync(db, every_store_call(out))
        # The proactive list a bot keeps in memory (LISTEN, and its reads).
        with ProactiveUsers(bot_url) as users:
            assert users.version >= 0
    assert called == OPERATIONS
    assert '"chat_id":"43"' in out.getvalue()
    assert one(conn, "SELECT count(*) FROM users") == 0


def test_every_async_store_call_runs_as_the_bot(bot_url: str, conn: Conn) -> None:
    async def scenario() -> set[str]:
        async with AsyncStore(bot_url) as db:
            return await run_async(db, every_store_call(io.StringIO()))

    assert asyncio.run(scenario()) == OPERATIONS
    assert one(conn, "SELECT count(*) FROM users") == 0


def test_the_integrations_storage_runs_as_the_bot(bot_url: str, conn: Conn) -> None:
    async def aiogram() -> None:
        async with AsyncStore(bot_url) as db:
            storage = SessionkeeperStorage(db)
            key = StorageKey(bot_id=1, chat_id=42, user_id=42)
            await storage.set_state(key, "ordering")
            await storage.set_data(key, {"drink": "tea"})
            assert await storage.update_data(key, {"size": "large"}) == {
                "drink": "tea",
                "size": "large",
            }
            assert await storage.get_state(key) == "ordering"
            assert await storage.get_data(key) == {"drink": "tea", "size": "large"}

    asyncio.run(aiogram())
    with Store(bot_url) as db:
        history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id=42)
        history.add_messages([HumanMessage("hi"), AIMessage("hello")])
        assert [m.content for m in history.messages] == ["hi", "hello"]
        history.clear()
        assert history.messages == []

    async def langchain_async() -> None:
        async with AsyncStore(bot_url) as db:
            history = SessionkeeperChatMessageHistory(db, channel="telegram", channel_user_id=7)
            await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
            assert [m.content for m in await history.aget_messages()] == ["q", "a"]
            await history.aclear()

    asyncio.run(langchain_async())
    assert one(conn, "SELECT count(*) FROM aiogram_fsm_states") == 1

    async def telegram_persistence() -> None:
        async with AsyncStore(bot_url) as db:
            persistence = SessionkeeperPersistence(db)
            await persistence.update_user_data(42, {"likes": "tea"})
            assert (await persistence.get_user_data())[42] == {"likes": "tea"}
            await persistence.drop_user_data(42)

    asyncio.run(telegram_persistence())
    with Store(bot_url) as db:
        saver = SessionkeeperSaver(db)
        config = thread_config(db.begin_turn("telegram", 42))
        agent_graph(saver).invoke(user_turn(1), config)
        assert saver.get_tuple(config) is not None
        saver.delete_thread(config["configurable"]["thread_id"])
    assert one(conn, "SELECT count(*) FROM langgraph_threads") == 0


def test_whatsapp_turns_run_as_the_bot(bot_url: str, conn: Conn) -> None:
    # pywa's handler as the bots' login: a turn begun, a tool-using exchange stored and
    # answered, then a turn refused by the rate limit and answered with the refusal.
    call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(bot_url, rate_per_minute=None, rate_per_day=1) as db:
            turns = WhatsAppTurns(db, refusal="later")

            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                exchange: list[dict[str, Any]] = [
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
                    {"role": "assistant", "content": "It is noon."},
                ]
                await turns.reply(msg, turn, exchange, input_tokens=3)

            # pywa_async's MessageHandler is typed with the sync client's callbacks.
            wa.add_handlers(MessageHandler(turns.handler(chat)))  # type: ignore[arg-type]
            await deliver(wa, message_webhook(ADA, "time?"))
            await deliver(wa, message_webhook(ADA, "again?"))

    api = run_whatsapp(scenario)
    assert api.texts() == ["It is noon.", "later"]
    assert one(conn, "SELECT count(*) FROM session_messages") == 4
    assert one(conn, "SELECT sum(input_tokens) FROM usage_stats WHERE channel = 'whatsapp'") == 3


def test_the_bot_cannot_read_the_secret_nor_change_the_schema(bot_url: str) -> None:
    with psycopg.connect(bot_url, autocommit=True) as bot:
        # The keyed id is computed for it (sk_user_key is SECURITY DEFINER) ...
        assert one(bot, "SELECT sk_user_key('telegram', '42')") is not None
        for statement in (
            "SELECT secret FROM user_key_secret",
            "CREATE TABLE mine (id int)",
            "ALTER TABLE users ADD COLUMN x int",
            "DROP TABLE job_runs",
            "TRUNCATE users",
            "CREATE FUNCTION sk_x() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SET ROLE sessionkeeper_owner",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bot.execute(statement)


def test_a_role_without_the_grants_gets_a_typed_error(database_url: str, conn: Conn) -> None:
    # The case: a bot login that is not (yet) a member of the bot role.
    conn.execute("DROP ROLE IF EXISTS sk_test_nobody")
    conn.execute("CREATE ROLE sk_test_nobody LOGIN")
    try:
        with (
            Store(as_login(database_url, "sk_test_nobody")) as db,
            pytest.raises(PermissionDenied, match="bot role"),
        ):
            db.begin_turn("telegram", 42, now=T0)
    finally:
        conn.execute("DROP OWNED BY sk_test_nobody")
        conn.execute("DROP ROLE sk_test_nobody")
    assert one(conn, "SELECT count(*) FROM users") == 0


# -- the daemon ---------------------------------------------------------------------------------


def connector(url: str) -> Callable[[], Any]:
    return lambda: psycopg.connect(url, autocommit=True)


def test_every_job_runs_as_the_daemon(bot_url: str, daemon_url: str, conn: Conn) -> None:
    day = timedelta(days=1)
    settings = {name: spec.settings() for name, spec in JOBS.items()}
    settings["partition_maintenance"] = JOBS["partition_maintenance"].settings(ahead=2)
    settings["session_archival"] = JOBS["session_archival"].settings(
        idle_seconds=86400, purge_after_seconds=0
    )
    settings["usage_rollup"] = JOBS["usage_rollup"].settings(prune_after_seconds=86400)
    settings["user_retention"] = JOBS["user_retention"].settings(inactive_seconds=5 * 86400)

    def run(name: str, now: Any) -> Any:
        report = run_job(connector(daemon_url), name, settings[name], replica_id="r", now=now)
        assert report.outcome == "success", (name, report.error)
        return report

    # Partitions for the days ahead: DDL, as the owner (SET ROLE around it).
    drop_calendar(conn)
    made = run("partition_maintenance", T0)
    assert made.details["ahead"] == {"rate_limits": 2, "usage_stats": 2}
    with Store(bot_url) as db:
        turn = db.begin_turn("telegram", 42, now=T0)
        db.finish_turn(turn, "hi", "hello", input_tokens=5, now=T0)
        other = db.get_or_create_user("telegram", 43, now=T0)
        db.register_proactive_user(43, other.user_id, now=T0)
        db.create_link_code(other.user_id, now=T0)
    later = T0 + 3 * day
    ran = {
        name: run(name, later)
        for name in (
            "proactive_reload",
            "usage_rollup",
            "rate_limit_cleanup",
            "link_code_expiry",
            "session_archival",
        )
    }
    # Expired partitions dropped (as the owner) and rows moved by the daemon's own grants.
    assert ran["rate_limit_cleanup"].details["partitions_dropped"] >= 1
    assert ran["usage_rollup"].rows >= 1
    assert ran["session_archival"].rows >= 1
    assert one(conn, "SELECT count(*) FROM archived_sessions") == 1
    ran["partition_maintenance"] = run("partition_maintenance", later)
    ran["checkpoint_retention"] = run("checkpoint_retention", later)
    ran["user_retention"] = run("user_retention", T0 + 10 * day)
    assert one(conn, "SELECT count(*) FROM users") == 0
    assert set(ran) == set(JOB_NAMES)
    # The partitions made are the owner's, like the rest of the schema.
    assert one(
        conn,
        "SELECT array_agg(DISTINCT pg_get_userbyid(c.relowner)) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid",
    ) == ["sessionkeeper_owner"]


def test_the_daemon_holds_only_its_grants_outside_partition_ddl(daemon_url: str) -> None:
    with psycopg.connect(daemon_url, autocommit=True) as daemon:
        for statement in (
            "SELECT secret FROM user_key_secret",
            "CREATE TABLE mine (id int)",
            "DROP TABLE job_runs",
            "SELECT sk_user_key('telegram', '42')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                daemon.execute(statement)


# -- the reader ---------------------------------------------------------------------------------


def test_the_reader_sees_counts_but_no_content_nor_secret(
    bot_url: str, reader_url: str, conn: Conn
) -> None:
    with Store(bot_url) as db:
        turn = db.begin_turn("telegram", 42, now=T0)
        db.finish_turn(turn, "my secret question", "an answer", input_tokens=5, now=T0)
    with psycopg.connect(reader_url, autocommit=True) as reader:
        assert one(reader, "SELECT count(*) FROM session_messages") == 2
        assert one(reader, "SELECT count(*) FROM users WHERE authenticated") == 1
        assert one(reader, "SELECT count(*) FROM job_runs") == 0
        assert one(reader, "SELECT sum(requests) FROM usage_daily") is None
        # The dashboards' own query (deploy/grafana) works.
        reader.execute(
            "SELECT relname, greatest(reltuples, 0)::bigint FROM pg_class"
            " WHERE oid IN ('session_messages'::regclass, 'archived_session_messages'::regclass)"
        )
        for statement in (
            "SELECT secret FROM user_key_secret",
            "SELECT content FROM session_messages",
            "SELECT extra FROM session_messages",
            "SELECT * FROM session_messages",
            "SELECT content FROM archived_session_messages",
            "SELECT channel_user_id FROM users",
            "SELECT display_name FROM users",
            "SELECT code FROM link_codes",
            "SELECT data FROM aiogram_fsm_states",
            "SELECT chat_id FROM proactive_users",
            "SELECT message FROM legacy_quarantined_messages",
            "SELECT sk_user_key('telegram', '42')",
            "SELECT * FROM sk_history_arrays_v2(gen_random_uuid(), 10)",
            "INSERT INTO job_runs (job, replica_id) VALUES ('x', 'y')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
    assert one(conn, "SELECT count(*) FROM job_runs") == 0


# -- migrate keeps it all -----------------------------------------------------------------------

_ACLS = r"""
SELECT 'table ' || c.relname, c.relacl::text, pg_get_userbyid(c.relowner),
       (SELECT array_agg(a.attname || '=' || a.attacl::text ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)::text
FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'S')
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, p.proacl::text, pg_get_userbyid(p.proowner),
       p.prosecdef::text || ' ' || coalesce(p.proconfig::text, '')
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
"""


def security(conn: Conn) -> dict[str, tuple[Any, ...]]:
    return {row[0]: row[1:] for row in conn.execute(_ACLS).fetchall()}


def test_migrate_twice_keeps_every_grant_and_security_setting(
    database_url: str, conn: Conn
) -> None:
    before = security(conn)
    assert before["table users"][0] is not None
    migrate_login = as_login(database_url, TEST_LOGINS["owner"])
    migrate.upgrade(migrate_login)
    assert security(conn) == before
    migrate.upgrade(migrate_login)
    migrate.upgrade(database_url)  # a superuser's migrate acts as the owner too
    assert security(conn) == before


# -- a new deployment, through the CLI ----------------------------------------------------------


def test_a_new_database_is_set_up_then_migrated_by_the_migrate_login(
    admin_url: str, empty_database_url: str
) -> None:
    create_logins(admin_url)
    options = [f"--{kind}-login={login}" for kind, login in TEST_LOGINS.items()]
    # Bad input: one line, nothing changed.
    refused = migrate_process(empty_database_url, "roles", "setup", "--bot-login=sk_nobody")
    assert (refused.returncode, refused.stderr) == (
        1,
        "sessionkeeper: no role 'sk_nobody': create the login first (docs/roles.md)\n",
    )
    as_bot = migrate_process(as_login(empty_database_url, TEST_LOGINS["bot"]), "roles", "setup")
    assert as_bot.returncode == 1
    assert as_bot.stderr.startswith("sessionkeeper: roles setup: permission denied")
    assert as_bot.stderr.endswith("run it as a superuser (docs/roles.md)\n")
    setup = migrate_process(empty_database_url, "roles", "setup", *options)
    assert setup.returncode == 0, setup.stderr
    assert "sk_test_bot made a member of sessionkeeper_bot" in setup.stdout
    migrated = migrate_process(as_login(empty_database_url, TEST_LOGINS["owner"]))
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'S')"
            " UNION SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
        assert owners == [("sessionkeeper_owner",)]
        assert one(conn, "SELECT count(*) FROM users") == 0
    check = migrate_process(empty_database_url, "roles", "check")
    assert (check.returncode, check.stdout) == (0, "")
    with Store(as_login(empty_database_url, TEST_LOGINS["bot"])) as db:
        # Now: revision 0022 made the partitions of the days around it (as the owner).
        assert db.begin_turn("telegram", 42).rate.allowed
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE checkpoints (id bigint)")
    check = migrate_process(empty_database_url, "roles", "check")
    assert (check.returncode, check.stdout) == (1, "no declared grants: table checkpoints\n")


def test_migrate_with_nothing_to_change_waits_for_no_table_lock(
    database_url: str, conn: Conn
) -> None:
    # GRANT locks its table: a migrate at head that changes nothing must not wait behind a
    # long ACCESS EXCLUSIVE lock (the daemon migrates on start).
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE archived_sessions IN ACCESS EXCLUSIVE MODE")
        blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        conn.execute("SET lock_timeout = '2s'")
        with psycopg.connect(database_url) as migrating:
            migrating.execute("SET lock_timeout = '2s'")
            assert roles.apply_grants(migrating)
    # A changed grant is put back (and would wait for the lock).
    conn.execute("GRANT SELECT ON user_key_secret TO sessionkeeper_reader")
    conn.execute("REVOKE UPDATE ON users FROM sessionkeeper_bot")
    before = security(conn)
    migrate.upgrade(database_url)
    after = security(conn)
    assert after != before
    assert "sessionkeeper_reader" not in (after["table user_key_secret"][0] or "")
    with (
        psycopg.connect(as_login(database_url, TEST_LOGINS["reader"])) as reader,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        reader.execute("SELECT secret FROM user_key_secret")


def test_the_daemon_process_runs_as_the_daemon_role(
    daemon_url: str, conn: Conn, tmp_path: Path
) -> None:
    # `sessionkeeper run` itself: its jobs, readiness check and gauges under the daemon's grants.
    env = daemon_env(daemon_url, SESSIONKEEPER_MIGRATE_ON_START="false", **every_job("1"))
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:

        def all_succeeded() -> bool:
            return all(
                (daemon.value("sessionkeeper_job_runs_total", job=job, outcome="success") or 0) >= 1
                for job in JOB_NAMES
            )

        wait_for(all_succeeded, "a successful run of every job")
        assert daemon.get("/readyz") == (200, "ready\n")
        assert wait_for(
            lambda: daemon.value("sessionkeeper_sessions_archivable") is not None, "gauges"
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert "permission denied" not in daemon.log_path.read_text()
    assert one(conn, "SELECT count(*) FROM job_runs WHERE outcome <> 'success'") == 0
