"""Bots and daemons of the previous release (0.1.0) keep working on a database at head.

During an upgrade, ``sessionkeeper migrate`` runs first and the replicas are rolled afterwards,
so for minutes the previous release's statements run against the new schema and functions
(expand/contract, docs/upgrades.md). Its statements are kept verbatim in
tests/fixtures/release-0.1.0/; every one of them runs here, with the parameters that release
sends, and its result is checked. Each scenario declares the statements it covers and must run
all of them; together the scenarios must cover every statement of the fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from release_support import release_statements

from sessionkeeper.jobs import usage_rollup as new_usage_rollup

RELEASE = "0.1.0"
STORE = release_statements(RELEASE, "store_queries.sql")
JOBS = release_statements(RELEASE, "jobs_queries.sql")

T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
IDLE = timedelta(minutes=30)

# What the 0.1.0 store's begin_turn decodes, in its order.
BEGIN_TURN_COLUMNS = [
    "user_id",
    "person_id",
    "display_name",
    "user_created",
    "now",
    "allowed",
    "retry_at",
    "refused_window",
    "session_id",
    "session_created",
    "history_seqs",
    "history_roles",
    "history_contents",
    "history_created",
]


@dataclass
class OldRelease:
    """Sends release 0.1.0's statements by name, as that release does (store: autocommit, one
    statement per call; jobs: the same, batches committing on their own)."""

    conn: psycopg.Connection[dict[str, Any]]
    ran: set[str] = field(default_factory=set)

    def store(self, name: str, **params: Any) -> list[dict[str, Any]]:
        self.ran.add(f"store:{name}")
        cursor = self.conn.execute(STORE[name], params)
        if name == "begin_turn":
            assert [c.name for c in cursor.description or []] == BEGIN_TURN_COLUMNS
        return cursor.fetchall()

    def job(self, name: str, **params: Any) -> psycopg.Cursor[dict[str, Any]]:
        self.ran.add(f"jobs:{name}")
        return self.conn.execute(JOBS[name], params)

    def first(self, name: str, **params: Any) -> dict[str, Any]:
        row = self.job(name, **params).fetchone()
        assert row is not None
        return row

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Arranging and checking rows directly (not a statement of the old release)."""
        cursor = self.conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []

    def user(self, channel: str = "telegram", channel_user_id: str | None = None) -> uuid.UUID:
        row = self.store(
            "get_or_create_user",
            channel=channel,
            channel_user_id=channel_user_id or uuid.uuid4().hex[:12],
            display_name=None,
            now=T0,
        )[0]
        return uuid.UUID(str(row["user_id"]))

    def append(self, session_id: uuid.UUID, *contents: str, now: datetime = T0) -> dict[str, Any]:
        roles = ["user", "assistant"] * (len(contents) // 2)
        return self.store(
            "append_messages",
            session_id=session_id,
            roles=roles,
            contents=list(contents),
            created=[now] * len(contents),
            now=now,
            keep=None,
            input_tokens=0,
            output_tokens=0,
            cached_tokens=0,
            track_usage=False,
        )[0]


Scenario = Callable[[OldRelease], None]
SCENARIOS: dict[str, tuple[frozenset[str], Scenario]] = {}


def covers(*statements: str) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        SCENARIOS[scenario.__name__] = (frozenset(statements), scenario)
        return scenario

    return register


@pytest.fixture
def old(database_url: str) -> Iterator[OldRelease]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield OldRelease(conn)


# -- the store ---------------------------------------------------------------------------------


def begin_turn(old: OldRelease, now: datetime, caps: list[int] | None = None) -> dict[str, Any]:
    return old.store(
        "begin_turn",
        channel="telegram",
        channel_user_id="1001",
        display_name="Ada",
        now=now,
        windows=[60],
        caps=caps or [15],
        durable=False,
        idle=IDLE,
        carry_pairs=2,
        history_pairs=20,
    )[0]


@covers(
    "store:begin_turn",
    "store:append_messages",
    "store:get_history",
    "store:trim_session_history",
)
def turns(old: OldRelease) -> None:
    first = begin_turn(old, T0)
    assert first["allowed"] and first["user_created"] and first["session_created"]
    assert first["display_name"] == "Ada" and first["now"] == T0
    assert first["history_contents"] == [] and first["history_seqs"] == []
    session = first["session_id"]
    # finish_turn of 0.1.0: the user's message with its time, the reply with none.
    appended = old.store(
        "append_messages",
        session_id=session,
        roles=["user", "assistant"],
        contents=["hi", "hello"],
        created=[T0, None],
        now=T0 + timedelta(seconds=2),
        keep=40,
        input_tokens=3,
        output_tokens=5,
        cached_tokens=1,
        track_usage=True,
    )[0]
    assert (appended["appended"], appended["trimmed"], appended["next_seq"]) == (2, 0, 2)
    assert old.sql("SELECT seq, role, content, created_at FROM session_messages ORDER BY seq") == [
        {"seq": 0, "role": "user", "content": "hi", "created_at": T0},
        {
            "seq": 1,
            "role": "assistant",
            "content": "hello",
            "created_at": T0 + timedelta(seconds=2),
        },
    ]
    assert old.sql("SELECT input_tokens, output_tokens, cached_tokens FROM usage_stats") == [
        {"input_tokens": 3, "output_tokens": 5, "cached_tokens": 1}
    ]
    # 0.1.0 does not write session_messages.user_id (revision 0014): the trigger gives it.
    assert old.sql(
        "SELECT count(*) AS n FROM session_messages m JOIN sessions s"
        " ON s.session_id = m.session_id AND s.user_id = m.user_id"
    ) == [{"n": 2}]
    second = begin_turn(old, T0 + timedelta(seconds=5))
    assert not second["user_created"] and not second["session_created"]
    assert second["session_id"] == session
    assert second["history_roles"] == ["user", "assistant"]
    assert second["history_contents"] == ["hi", "hello"]
    assert second["history_created"][0] == T0
    history = old.store("get_history", session_id=session, history_pairs=1)[0]
    assert history["history_seqs"] == [0, 1]
    trimmed = old.store("trim_session_history", session_id=session, keep=1)[0]
    assert trimmed == {"session_id": session, "trimmed": 1}
    assert old.store("get_history", session_id=session, history_pairs=5)[0]["history_contents"] == [
        "hello"
    ]


@covers("store:begin_turn", "store:check_rate_limit", "store:get_or_create_user")
def rate_limits(old: OldRelease) -> None:
    assert begin_turn(old, T0, caps=[1])["allowed"]
    refused = begin_turn(old, T0 + timedelta(seconds=1), caps=[1])
    assert not refused["allowed"] and refused["session_id"] is None
    assert refused["refused_window"] == 60
    assert refused["retry_at"] == datetime(2026, 3, 2, 12, 1, tzinfo=UTC)
    user = old.user()

    def check(now: datetime) -> dict[str, Any]:
        return old.store(
            "check_rate_limit",
            user_id=user,
            now=now,
            windows=[60, 3600],
            caps=[5, 2],
            durable=True,
        )[0]

    assert check(T0)["allowed"] and check(T0 + timedelta(minutes=2))["allowed"]
    third = check(T0 + timedelta(minutes=4))
    assert (third["allowed"], third["refused_window"]) == (False, 3600)
    assert third["retry_at"] == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


@covers("store:get_or_create_user", "store:get_or_create_session", "store:append_messages")
def sessions(old: OldRelease) -> None:
    made = old.store(
        "get_or_create_user", channel="whatsapp", channel_user_id="+1", display_name="Bo", now=T0
    )[0]
    assert made["user_created"] and made["channel"] == "whatsapp" and made["person_id"] is None
    again = old.store(
        "get_or_create_user", channel="whatsapp", channel_user_id="+1", display_name=None, now=T0
    )[0]
    assert not again["user_created"] and again["display_name"] == "Bo"

    def session(now: datetime) -> dict[str, Any]:
        return old.store(
            "get_or_create_session", user_id=made["user_id"], now=now, idle=IDLE, carry_pairs=1
        )[0]

    opened = session(T0)
    assert opened["session_created"]
    old.append(opened["session_id"], "q1", "a1", "q2", "a2")
    assert session(T0 + timedelta(minutes=1)) == {**opened, "session_created": False}
    stale = session(T0 + timedelta(hours=2))
    assert stale["session_created"] and stale["session_id"] != opened["session_id"]
    carried = old.sql(
        "SELECT content FROM session_messages WHERE session_id = %s ORDER BY seq",
        stale["session_id"],
    )
    assert [row["content"] for row in carried] == ["q2", "a2"]


@covers("store:track_usage", "store:register_proactive_user", "store:load_users_from_db")
def usage_and_proactive(old: OldRelease) -> None:
    telegram, whatsapp, unregistered = old.user(), old.user("whatsapp"), old.user("whatsapp")
    tracked = old.store(
        "track_usage",
        user_id=telegram,
        channel="telegram",
        input_tokens=10,
        output_tokens=20,
        cached_tokens=0,
        now=T0,
    )[0]
    assert isinstance(tracked["stat_id"], uuid.UUID)
    registered = old.store("register_proactive_user", user_id=whatsapp, chat_id="chat-9", now=T0)
    assert registered == [{"user_id": whatsapp, "chat_id": "chat-9"}]
    loaded = {row["user_id"]: row["chat_id"] for row in old.store("load_users_from_db")}
    (telegram_chat,) = old.sql("SELECT channel_user_id FROM users WHERE user_id = %s", telegram)
    assert loaded == {telegram: telegram_chat["channel_user_id"], whatsapp: "chat-9"}
    assert unregistered not in loaded


@covers("store:create_link_code", "store:redeem_link_code", "store:get_linked_users")
def identity(old: OldRelease) -> None:
    owner, other = old.user(), old.user("whatsapp")
    code = old.store(
        "create_link_code", user_id=owner, code="123456", now=T0, ttl=timedelta(minutes=10)
    )
    assert code == [{"code": "123456", "expires_at": T0 + timedelta(minutes=10)}]

    def redeem(code: str) -> dict[str, Any]:
        return old.store(
            "redeem_link_code",
            user_id=other,
            code=code,
            now=T0 + timedelta(minutes=1),
            max_failures=10,
            failure_window=timedelta(minutes=10),
            lockout=timedelta(minutes=15),
        )[0]

    assert redeem("000000")["outcome"] == "invalid"
    linked = redeem("123456")
    assert linked["outcome"] == "linked" and linked["owner_id"] == owner
    users = old.store("get_linked_users", user_id=other)
    assert {row["user_id"] for row in users} == {owner, other}
    assert {row["person_id"] for row in users} == {linked["person_id"]}


@covers("store:forget")
def erasure(old: OldRelease) -> None:
    user = old.user()
    old.store("register_proactive_user", user_id=user, chat_id="c", now=T0)
    done = {
        row["table_name"]: (row["action"], row["row_count"])
        for row in old.store("forget", user_id=user, person_id=None)
    }
    assert done["users"] == ("deleted", 1) and done["proactive_users"] == ("deleted", 1)
    assert old.sql("SELECT user_id FROM users WHERE user_id = %s", user) == []
    assert old.store("forget", user_id=uuid.uuid4(), person_id=None) == []


# -- the jobs ----------------------------------------------------------------------------------

NOW = T0 + timedelta(days=40)


@covers("jobs:rate_limit_cleanup")
def rate_limit_cleanup(old: OldRelease) -> None:
    user = old.user()
    old.sql(
        "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
        " VALUES (%s, 60, %s, 1), (%s, 60, %s, 1)",
        user,
        NOW - timedelta(hours=1),
        user,
        NOW,
    )
    deleted = old.job("rate_limit_cleanup", now=NOW, grace_seconds=60, batch_size=100)
    assert deleted.rowcount == 1
    assert [row["window_start"] for row in old.sql("SELECT window_start FROM rate_limits")] == [NOW]


@covers("jobs:link_code_expiry", "jobs:link_code_failures_expiry")
def link_code_expiry(old: OldRelease) -> None:
    user = old.user()
    old.sql(
        "INSERT INTO link_codes (code, user_id, created_at, expires_at)"
        " VALUES ('111111', %s, %s, %s), ('222222', %s, %s, %s)",
        user,
        NOW - timedelta(days=1),
        NOW - timedelta(days=1),
        user,
        NOW,
        NOW + timedelta(minutes=10),
    )
    old.sql(
        "INSERT INTO link_code_failures (user_id, window_start, failures) VALUES (%s, %s, 3)",
        user,
        NOW - timedelta(days=1),
    )
    expired = old.job("link_code_expiry", now=NOW, retention_seconds=3600, batch_size=100)
    assert expired.rowcount == 1
    assert [row["code"] for row in old.sql("SELECT code FROM link_codes")] == ["222222"]
    failures = old.job(
        "link_code_failures_expiry", now=NOW, failure_window_seconds=600, batch_size=100
    )
    assert failures.rowcount == 1


@covers(
    "jobs:archive_sessions",
    "jobs:archive_session_messages",
    "jobs:archive_delete_sessions",
    "jobs:restore_session",
    "jobs:restore_session_messages",
    "jobs:restore_delete_archive",
    "jobs:purge_archived_sessions",
)
def session_archival(old: OldRelease) -> None:
    user = old.user()
    session = old.store("get_or_create_session", user_id=user, now=T0, idle=IDLE, carry_pairs=0)[0][
        "session_id"
    ]
    old.append(session, "q", "a")
    params = {"now": NOW, "idle_seconds": 86400, "batch_size": 100}
    ids = [row["session_id"] for row in old.job("archive_sessions", **params)]
    assert ids == [session]
    assert old.job("archive_session_messages", session_ids=ids).rowcount == 2
    assert old.job("archive_delete_sessions", session_ids=ids).rowcount == 1
    assert old.sql("SELECT count(*) AS n FROM archived_session_messages") == [{"n": 2}]
    assert old.sql("SELECT count(*) AS n FROM sessions") == [{"n": 0}]
    # Restore it, then archive it again and purge the archive.
    assert old.first("restore_session", session_id=session, now=NOW)["session_id"] == session
    assert old.job("restore_session_messages", session_id=session).rowcount == 2
    assert old.job("restore_delete_archive", session_id=session).rowcount == 1
    restored = old.sql("SELECT content FROM session_messages ORDER BY seq")
    assert [row["content"] for row in restored] == ["q", "a"]
    later = {**params, "now": NOW + timedelta(days=2)}
    ids = [row["session_id"] for row in old.job("archive_sessions", **later)]
    old.job("archive_session_messages", session_ids=ids)
    old.job("archive_delete_sessions", session_ids=ids)
    purged = old.job(
        "purge_archived_sessions",
        now=NOW + timedelta(days=40),
        purge_after_seconds=86400,
        batch_size=100,
    )
    assert purged.rowcount == 1
    assert old.sql("SELECT count(*) AS n FROM archived_session_messages") == [{"n": 0}]


@covers("jobs:proactive_upsert", "jobs:proactive_remove_stale", "jobs:proactive_list_size")
def proactive_reload(old: OldRelease) -> None:
    telegram, whatsapp = old.user(), old.user("whatsapp")
    old.store("register_proactive_user", user_id=whatsapp, chat_id="chat-w", now=T0)
    stale = old.user("signal")
    old.sql("INSERT INTO proactive_user_list (user_id, chat_id) VALUES (%s, 'gone')", stale)
    params = {"channel": "telegram", "now": NOW, "batch_size": 100}
    batch = old.first("proactive_upsert", after=uuid.UUID(int=0), **params)
    assert (batch["seen"], batch["written"]) == (2, 2)
    assert batch["last_user_id"] == max(telegram, whatsapp)
    assert old.job("proactive_remove_stale", **params).rowcount == 1
    assert old.first("proactive_list_size") == {"count": 2}


@covers("jobs:usage_rollup", "jobs:usage_prune")
def usage_rollup(old: OldRelease) -> None:
    # 0.1.0's rollup and prune run beside this release's rollup during the upgrade. They act on
    # the rows written before revision 0013 (a rolled_up flag) only; rows written since (by bots
    # of either release: the flag left NULL) are the watermark rollup's. Each row is counted
    # once, whichever daemon runs first and however often.
    user = old.user()
    for tokens in (10, 20):
        old.store(
            "track_usage",
            user_id=user,
            channel="telegram",
            input_tokens=tokens,
            output_tokens=1,
            cached_tokens=0,
            now=T0,
        )
    old.sql(  # a row from before the upgrade, not yet counted
        "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at, rolled_up)"
        " VALUES (%s, 'telegram', 400, %s, false)",
        user,
        T0,
    )
    totals = "SELECT requests, input_tokens FROM usage_daily WHERE user_id = %s"
    assert old.first("usage_rollup", batch_size=100, now=NOW) == {"count": 1}
    assert old.sql(totals, user) == [{"requests": 1, "input_tokens": 400}]
    with psycopg.connect(old.conn.info.dsn, autocommit=True) as conn:
        assert new_usage_rollup.run(conn, new_usage_rollup.Settings(), NOW).rows == 2
    assert old.first("usage_rollup", batch_size=100, now=NOW) == {"count": 0}
    assert old.sql(totals, user) == [{"requests": 3, "input_tokens": 430}]
    pruned = old.job("usage_prune", now=NOW, prune_after_seconds=86400, batch_size=100)
    assert pruned.rowcount == 1  # the flagged row; rows without the flag are left alone
    assert old.sql("SELECT count(*) FROM usage_stats") == [{"count": 2}]


@covers(
    "jobs:lock_job",
    "jobs:unlock_job",
    "jobs:ledger_start",
    "jobs:ledger_finish",
    "jobs:ledger_skipped",
    "jobs:ledger_slot_done",
    "jobs:ledger_sweep_interrupted",
    "jobs:ledger_prune",
    "jobs:ledger_last_runs",
)
def locking_and_ledger(old: OldRelease) -> None:
    lock = {"namespace": 0x736B6A62, "key": 12345}
    assert old.first("lock_job", **lock) == {"pg_try_advisory_lock": True}
    assert old.first("unlock_job", **lock) == {"pg_advisory_unlock": True}
    slot = datetime.now(UTC).replace(microsecond=0)
    started = old.first(
        "ledger_start",
        job="usage_rollup",
        replica_id="old-replica",
        details=Jsonb({"slot": slot.isoformat()}),
    )
    old.job(
        "ledger_finish",
        run_id=started["run_id"],
        outcome="success",
        rows=7,
        error=None,
        details=Jsonb({"batches": 1}),
    )
    slot_done = {"job": "usage_rollup", "slot": slot.isoformat(), "slot_time": slot}
    assert old.first("ledger_slot_done", **slot_done) == {"exists": True}
    old.job(
        "ledger_skipped",
        job="rate_limit_cleanup",
        replica_id="old-replica",
        reason="locked by another replica",
        details=Jsonb({}),
    )
    old.sql(
        "INSERT INTO job_runs (job, replica_id, outcome) VALUES (%s, 'x', 'running')",
        "session_archival",
    )
    assert old.job("ledger_sweep_interrupted", job="session_archival").rowcount == 1
    assert old.job("ledger_prune", job="usage_rollup", keep_seconds=86400).rowcount == 0
    last = {
        row["job"]: row
        for row in old.job(
            "ledger_last_runs", jobs=["usage_rollup", "rate_limit_cleanup", "session_archival"]
        )
    }
    assert (last["usage_rollup"]["outcome"], last["usage_rollup"]["rows"]) == ("success", 7)
    assert last["rate_limit_cleanup"]["outcome"] == "skipped"
    assert last["session_archival"]["outcome"] == "failure"


@covers("jobs:domain_gauges")
def domain_gauges(old: OldRelease) -> None:
    user = old.user()
    old.store("get_or_create_session", user_id=user, now=T0, idle=IDLE, carry_pairs=0)
    gauges = old.first("domain_gauges", now=NOW, idle_seconds=86400)
    assert gauges["sessions_active"] == 1 and gauges["sessions_archivable"] == 1
    assert gauges["sessions_archivable_age_seconds"] == pytest.approx(39 * 86400)


# -- the checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_previous_release_statement_works_at_head(name: str, old: OldRelease) -> None:
    statements, scenario = SCENARIOS[name]
    scenario(old)
    assert statements <= old.ran, f"{name} did not run {sorted(statements - old.ran)}"


def test_every_statement_of_the_previous_release_is_exercised() -> None:
    # A statement added to (or renamed in) the fixtures must get a scenario, and a scenario
    # cannot name a statement the fixtures lack: coverage never shrinks silently.
    declared = set().union(*(statements for statements, _ in SCENARIOS.values()))
    fixtures = {f"store:{name}" for name in STORE} | {f"jobs:{name}" for name in JOBS}
    assert declared == fixtures
    assert len(STORE) == 14 and len(JOBS) == 25  # the fixtures parsed whole
