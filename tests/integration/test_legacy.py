"""Adopting a database made by the original TypeScript store (``sessionkeeper migrate``).

Every test builds a seed-era database by running the seed's DDL
(tests/integration/legacy_seed.sql) on an empty database, fills it like the old bots would
have, runs the real CLI as a process and compares every message, row and foreign table before
and after.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from test_cli import clean_env, sessionkeeper, sessionkeeper_until
from test_migrations import _drift

from sessionkeeper.admin import legacy, migrate
from sessionkeeper.admin.legacy import conversion
from store import SchemaOutOfDate, Store

SEED_DDL = Path(__file__).with_name("legacy_seed.sql").read_text()
QUARANTINE = legacy.QUARANTINE_TABLE
OTHER_TABLES = (
    "memories",
    "entity_relations",
    "user_preferences",
    "conversation_goals",
    "conversation_goal_journal",
    "memory_write_queue",
    "session_summaries",
    "pulse_engagement_scores",
    "proactive_user_state",
    "proactive_messages",
    "funnel_instances",
    "scraped_media",
    "price_alerts",
    "user_relationships",
    "squads",
    "squad_members",
    "squad_intents",
)
T0 = datetime(2025, 3, 1, 9, 0)  # naive, as the seed's TIMESTAMP columns hold it
LONG_OK = "é" * (32 * 1024)  # 64 KiB exactly in UTF-8: still allowed
TOO_LONG = "x" * (64 * 1024 + 1)


def iso(moment: datetime) -> str:
    """JavaScript's Date.prototype.toISOString()."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


@dataclass
class Seed:
    """What was put into the legacy database, to compare with what comes out."""

    histories: dict[uuid.UUID, list[Any]] = field(default_factory=dict)
    users: list[tuple[Any, ...]] = field(default_factory=list)


def build_seed(url: str, *, extra_sessions: int = 40) -> Seed:
    seed = Seed()
    rng = random.Random(6)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_DDL)
        person = uid(0xA)
        conn.execute("INSERT INTO persons (person_id, created_at) VALUES (%s, %s)", [person, T0])
        users = [
            (uid(1), "telegram", "100001", "Zoë 🦊", "Zürich", person, True),
            (uid(2), "whatsapp", "+491701234567", "Zoë", None, person, True),
            (uid(3), "telegram", "100003", "李雷", "北京", None, True),
            (uid(4), "telegram", "100004", 'Ñandú "the" O\'Brien', None, None, False),
            (uid(5), "whatsapp", "+5511987654321", None, "São Paulo", None, True),
        ]
        for n, user in enumerate(users):
            created = T0 + timedelta(days=n)
            conn.execute(
                "INSERT INTO users (user_id, channel, channel_user_id, display_name,"
                " home_location, person_id, authenticated, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [*user, created, created + timedelta(hours=5)],
            )
            seed.users.append((*user, created, created + timedelta(hours=5)))

        def session(sid: uuid.UUID, user: uuid.UUID, history: list[Any] | None) -> None:
            if history is None:  # the seed's default '[]'
                conn.execute(
                    "INSERT INTO sessions (session_id, user_id, last_active, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    [sid, user, T0, T0],
                )
                history = []
            else:
                conn.execute(
                    "INSERT INTO sessions (session_id, user_id, messages, last_active, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [sid, user, Jsonb(history), T0 + timedelta(hours=1), T0],
                )
            seed.histories[sid] = history

        texts = [
            "Hallo! 👋 Wie geht's?",
            "Line one\nline two\ttabbed",
            'quotes " and \\ backslashes \\n literally',
            "مرحبا بالعالم",
            "🇨🇭🏳️‍🌈👨‍👩‍👧‍👦 e\u0301",
            "SELECT * FROM users; -- not an injection",
        ]
        forty = [
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"{texts[i % len(texts)]} #{i}",
                "timestamp": iso(T0 + timedelta(minutes=i, milliseconds=i)),
            }
            for i in range(40)
        ]
        session(uid(0x101), uid(1), forty)
        session(uid(0x102), uid(1), [])
        session(uid(0x103), uid(2), None)
        awkward = [
            {"role": "system", "content": "You are helpful.", "timestamp": iso(T0)},
            {"role": "function", "content": '{"temp": 21}', "timestamp": iso(T0)},
            {"role": "user", "content": TOO_LONG, "timestamp": iso(T0)},
            {"role": "user", "content": LONG_OK, "timestamp": "2025-03-01T10:00:00"},
            {"role": "assistant", "content": [{"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": ""},
            "just a string",
            None,
            {"role": "tool", "content": "42", "timestamp": 1740823200000},
            {"role": "user", "content": "no timestamp"},
            {"role": "assistant", "content": "bad timestamp", "timestamp": "yesterday"},
            {"content": "no role at all", "timestamp": iso(T0)},
        ]
        session(uid(0x104), uid(3), awkward)
        session(uid(0x105), uid(4), forty[:3])
        for n in range(extra_sessions):
            start = T0 + timedelta(days=rng.randrange(300), seconds=rng.randrange(86400))
            history = [
                {
                    "role": rng.choice(["user", "assistant"]),
                    "content": rng.choice(texts) * rng.randint(1, 3),
                    "timestamp": iso(start + timedelta(seconds=17 * i)),
                }
                for i in range(rng.randint(0, 40))
            ]
            session(uid(0x1000 + n), users[n % len(users)][0], history)

        for user in users:
            conn.execute(
                "INSERT INTO rate_limits (user_id, window_start, request_count) VALUES"
                " (%s, %s, 3), (%s, %s, 15)",
                [user[0], T0, user[0], T0 + timedelta(minutes=1)],
            )
            conn.execute(
                "INSERT INTO usage_stats (stat_id, user_id, channel, input_tokens, output_tokens,"
                " cached_tokens, created_at) VALUES (%s, %s, %s, 1200, 340, 800, %s)",
                [uuid.uuid4(), user[0], user[1], T0],
            )
        conn.execute(
            "INSERT INTO link_codes (code, user_id, expires_at) VALUES"
            " ('012345', %s, %s), ('987654', %s, %s)",
            [uid(3), T0 + timedelta(minutes=10), uid(4), T0 - timedelta(days=1)],
        )
        fill_other_tables(conn)
    return seed


def fill_other_tables(conn: psycopg.Connection[Any]) -> None:
    statements = """
        INSERT INTO memories (memory_id, user_id, person_id, content, embedding) VALUES
            (gen_random_uuid(), %(u1)s, %(p)s, 'likes hiking 🥾', '{0.1,0.2,0.3}');
        INSERT INTO entity_relations (user_id, subject, predicate, object)
            VALUES (%(u1)s, 'Zoë', 'lives_in', 'Zürich');
        INSERT INTO user_preferences VALUES (%(u3)s, 'units', '"metric"', '2025-01-01 00:00');
        INSERT INTO conversation_goals (goal_id, user_id, session_id, goal)
            VALUES ('00000000-0000-0000-0000-000000009001', %(u1)s, %(s1)s, 'plan trip');
        INSERT INTO conversation_goal_journal (goal_id, note)
            SELECT goal_id, 'started' FROM conversation_goals;
        INSERT INTO memory_write_queue (payload) VALUES ('{"op": "upsert"}');
        INSERT INTO session_summaries VALUES (%(s1)s, 'Talked about hiking.', '2025-03-02 08:00');
        INSERT INTO pulse_engagement_scores VALUES (%(u1)s, 0.75, '2025-03-02 08:00');
        INSERT INTO proactive_user_state VALUES (%(u1)s, '{"muted": false}', '2025-03-02 08:00');
        INSERT INTO proactive_messages (user_id, content) VALUES (%(u1)s, 'Guten Morgen ☀️');
        INSERT INTO funnel_instances VALUES (gen_random_uuid(), %(u3)s, 'onboarding', now());
        INSERT INTO scraped_media (url, caption) VALUES ('https://example.com/r/1', 'reel');
        INSERT INTO price_alerts (user_id, symbol, threshold) VALUES (%(u5)s, 'BTC', 65000.5);
        INSERT INTO user_relationships VALUES (%(u1)s, %(u3)s, '2025-03-03 12:00');
        INSERT INTO squads VALUES ('00000000-0000-0000-0000-0000000005a1', 'hikers', now());
        INSERT INTO squad_members VALUES ('00000000-0000-0000-0000-0000000005a1', %(u1)s);
        INSERT INTO squad_intents (squad_id, intent)
            VALUES ('00000000-0000-0000-0000-0000000005a1', 'hike on Saturday');
        """
    params = {"u1": uid(1), "u3": uid(3), "u5": uid(5), "p": uid(0xA), "s1": uid(0x101)}
    for statement in statements.split(";")[:-1]:
        conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})


def foreign_fingerprint(url: str) -> dict[str, Any]:
    """Contents, columns and constraints of the other subsystems' tables."""
    with psycopg.connect(url) as conn:
        result: dict[str, Any] = {}
        for table in OTHER_TABLES:
            rows = conn.execute(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                    " , count(*) FROM {} t"
                ).format(sql.Identifier(table))
            ).fetchone()
            columns = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY 1",
                [table],
            ).fetchall()
            constraints = conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass ORDER BY 1",
                [table],
            ).fetchall()
            result[table] = (rows, columns, constraints)
    return result


def converted(
    url: str,
) -> tuple[dict[uuid.UUID, list[tuple[Any, ...]]], dict[tuple[Any, ...], Any]]:
    """History rows per session, and quarantined messages by (session, array index)."""
    with psycopg.connect(url) as conn:
        histories: dict[uuid.UUID, list[tuple[Any, ...]]] = {}
        for sid, seq, role, content, created, extra in conn.execute(
            "SELECT session_id, seq, role, content, created_at, extra FROM session_messages"
            " ORDER BY session_id, seq"
        ):
            histories.setdefault(sid, []).append((seq, role, content, created, extra))
        quarantined = {
            (sid, index): (reason, message, user)
            for sid, index, reason, message, user in conn.execute(
                "SELECT session_id, array_index, reason, message, user_id"
                " FROM legacy_quarantined_messages"
            )
        }
    return histories, quarantined


def expected_time(value: Any) -> datetime | None:
    """The time a legacy timestamp stands for, legacy zone UTC."""
    if isinstance(value, str) and value.endswith("Z"):
        return datetime.fromisoformat(value)
    if isinstance(value, str) and value[:2] == "20":
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC)
    return None


def assert_every_message_kept(url: str, seed: Seed) -> None:
    """Each legacy element is either the next history row (same role, content, timestamp, and
    its other keys as extra) or quarantined verbatim; nothing else exists."""
    histories, quarantined = converted(url)
    with psycopg.connect(url) as conn:
        sessions = conn.execute("SELECT session_id, user_id, next_seq FROM sessions").fetchall()
    owners = {sid: user for sid, user, _ in sessions}
    next_seq = {sid: n for sid, _, n in sessions}
    assert set(histories) <= set(seed.histories)
    for sid, history in seed.histories.items():
        rows = iter(histories.get(sid, []))
        kept = 0
        for index, element in enumerate(history):
            if (sid, index) in quarantined:
                _, message, user = quarantined.pop((sid, index))
                assert message == element and user == owners[sid]
                continue
            seq, role, content, created, extra = next(rows)
            assert (seq, role, content) == (kept, element["role"], element["content"])
            assert extra == (legacy.extra_fields(element) or None), (sid, index)
            wanted = expected_time(element.get("timestamp"))
            if wanted is not None:
                assert created == wanted, (sid, index)
            kept += 1
        assert next(rows, None) is None, f"extra rows in {sid}"
        assert next_seq[sid] == kept
    assert quarantined == {}, "quarantined messages that were not in any history"


def migrate_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = sessionkeeper("migrate", *args, env=clean_env(DATABASE_URL=url), timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ours_drift(url: str) -> list[Any]:
    """Schema differences, leaving out the other subsystems' tables (not in our metadata)."""
    return [
        d
        for d in _drift(url)
        if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name in OTHER_TABLES)
    ]


@pytest.fixture
def seed_url(empty_database_url: str) -> Iterator[str]:
    yield empty_database_url


def test_migrate_adopts_a_seed_database_and_keeps_every_message(seed_url: str) -> None:
    seed = build_seed(seed_url)
    foreign = foreign_fingerprint(seed_url)

    result = migrate_cli(seed_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TypeScript-era database found" in out
    assert "batch 1:" in out
    assert "7 quarantined in legacy_quarantined_messages" in out, out
    assert "2 without a readable timestamp" in out, out
    assert f"migrated from empty to {migrate.head_revision()}" in out

    assert migrate.current_revision(seed_url) == migrate.head_revision()
    assert ours_drift(seed_url) == []
    assert_every_message_kept(seed_url, seed)
    assert foreign_fingerprint(seed_url) == foreign

    histories, quarantined = converted(seed_url)
    assert {index: q[0] for (sid, index), q in quarantined.items() if sid == uid(0x104)} == {
        1: "unknown role",
        2: f"over {64 * 1024} bytes",
        4: "content is not text",
        5: "empty content",
        6: "not a {role, content} object",
        7: "not a {role, content} object",
        11: "unknown role",
    }
    awkward = histories[uid(0x104)]
    assert [r[1] for r in awkward] == ["system", "user", "tool", "user", "assistant"]
    assert awkward[1][2] == LONG_OK
    assert awkward[1][3] == datetime(2025, 3, 1, 10, tzinfo=UTC)  # no offset: legacy zone
    # Unreadable timestamps take the previous message's time.
    assert awkward[3][3] == awkward[4][3] == awkward[2][3]
    assert len(histories[uid(0x101)]) == 40 and uid(0x102) not in histories

    with psycopg.connect(seed_url) as conn:
        users = conn.execute(
            "SELECT user_id, channel, channel_user_id, display_name, home_location, person_id,"
            " authenticated, created_at, updated_at FROM users ORDER BY user_id"
        ).fetchall()
        assert users == [
            (*u[:7], u[7].replace(tzinfo=UTC), u[8].replace(tzinfo=UTC)) for u in seed.users
        ]
        assert conn.execute(
            "SELECT count(*), min(window_seconds), max(window_seconds), sum(request_count)"
            " FROM rate_limits"
        ).fetchone() == (10, 60, 60, 90)
        assert conn.execute(
            "SELECT count(*), sum(input_tokens + output_tokens + cached_tokens),"
            " bool_or(rolled_up), min(created_at) FROM usage_stats"
        ).fetchone() == (5, 5 * 2340, False, T0.replace(tzinfo=UTC))
        assert conn.execute(
            "SELECT code, created_at, expires_at FROM link_codes ORDER BY code"
        ).fetchall() == [
            ("012345", T0.replace(tzinfo=UTC), (T0 + timedelta(minutes=10)).replace(tzinfo=UTC)),
            (
                "987654",
                (T0 - timedelta(days=1, minutes=10)).replace(tzinfo=UTC),
                (T0 - timedelta(days=1)).replace(tzinfo=UTC),
            ),
        ]

    # The store works on the adopted database: history read back, appends continue the seq.
    with Store(seed_url) as store:
        history = store.get_history(uid(0x101), max_pairs=20)
        assert [m.content for m in history] == [m["content"] for m in seed.histories[uid(0x101)]]
        store.append_messages(uid(0x101), [{"role": "user", "content": "back again 👋"}])
        linked = store.get_linked_users(uid(1))
        assert {u.user_id for u in linked} == {uid(1), uid(2)}
    with psycopg.connect(seed_url) as conn:
        assert conn.execute(
            "SELECT max(seq), count(*) FROM session_messages WHERE session_id = %s", [uid(0x101)]
        ).fetchone() == (40, 41)

    again = migrate_cli(seed_url)
    assert again.returncode == 0 and "already at" in again.stdout, again.stdout


# Numbers a Python float cannot hold: more than 17 significant digits, and beyond its range
# (PostgreSQL writes 1e400 + 0.5 out in full; Python reads it as infinity).
PRECISE = "0.12345678901234567890123456789"
HUGE_INT = "123456789012345678901234567890"
OUT_OF_RANGE = "1" + "0" * 400 + ".5"
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
WITH_EXTRAS = uid(0x100)  # sorts first: the first batch of one converts it alone


def add_history_with_extras(url: str, seed: Seed) -> None:
    """A session whose messages carry keys besides role, content and timestamp, written as JSON
    text so that its numbers reach the legacy column exactly."""
    history = f"""[
        {{"role": "user", "content": "Weather in Oslo?", "timestamp": "{iso(T0)}",
          "name": "Zoë", "id": "m1"}},
        {{"role": "assistant", "content": "", "tool_calls": [{json.dumps(CALL)}]}},
        {{"role": "tool", "content": "-3 °C", "tool_call_id": "c1",
          "meta": {{"source": {{"api": "met", "cached": true}}, "tries": [1, 2.5, null]}}}},
        {{"role": "tool", "content": "too big", "tool_call_id": "c2",
          "blob": "{"x" * 64 * 1024}"}},
        {{"role": "assistant", "content": "overflow", "score": {OUT_OF_RANGE}}},
        {{"role": "user", "content": {PRECISE}}},
        {{"role": "assistant", "content": "Cold.", "score": {PRECISE}, "count": {HUGE_INT}}}
    ]"""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, messages, last_active, created_at)"
            " VALUES (%s, %s, %s::jsonb, %s, %s)",
            [WITH_EXTRAS, uid(5), history, T0, T0],
        )
        row = conn.execute(
            "SELECT messages FROM sessions WHERE session_id = %s", [WITH_EXTRAS]
        ).fetchone()
    assert row is not None
    seed.histories[WITH_EXTRAS] = row[0]  # as Python reads it, like the converted side


def test_other_keys_of_a_message_are_kept_as_its_extra(seed_url: str) -> None:
    seed = build_seed(seed_url, extra_sessions=0)
    add_history_with_extras(seed_url, seed)

    dry = migrate_cli(seed_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "10 quarantined" in dry.stdout, dry.stdout
    assert "4 carry extra fields (kept in session_messages.extra)" in dry.stdout

    first = migrate_cli(seed_url, "--batch-size", "1", "--max-batches", "1")
    assert first.returncode == 0, first.stderr
    assert "batch 1: 1/6 sessions, 4 messages copied, 3 quarantined" in first.stdout
    with psycopg.connect(seed_url) as conn:
        # Copied and verified jsonb to jsonb: every digit is there.
        assert conn.execute(
            "SELECT extra ->> 'score', extra ->> 'count' FROM session_messages"
            " WHERE session_id = %s AND seq = 3",
            [WITH_EXTRAS],
        ).fetchone() == (PRECISE, HUGE_INT)
        assert conn.execute(
            "SELECT reason, message ->> 'score' FROM legacy_quarantined_messages"
            " WHERE session_id = %s ORDER BY array_index",
            [WITH_EXTRAS],
        ).fetchall() == [
            (f"extra fields over {64 * 1024} bytes", None),
            ("number out of range in extra fields", OUT_OF_RANGE),
            ("content is not text", None),
        ]
        # Quarantined verbatim, number and all.
        assert conn.execute(
            "SELECT message ->> 'content' FROM legacy_quarantined_messages"
            " WHERE session_id = %s AND array_index = 5",
            [WITH_EXTRAS],
        ).fetchone() == (PRECISE,)
        converted_first = conn.execute(
            "SELECT seq, role, content, extra::text FROM session_messages WHERE session_id = %s"
            " ORDER BY seq",
            [WITH_EXTRAS],
        ).fetchall()

    # Running migrate again converts the rest and leaves what was converted as it was.
    second = migrate_cli(seed_url)
    assert second.returncode == 0, second.stderr
    assert "every history converted" in second.stdout
    third = migrate_cli(seed_url)
    assert third.returncode == 0 and "already at" in third.stdout, third.stdout
    assert_every_message_kept(seed_url, seed)
    assert ours_drift(seed_url) == []
    with psycopg.connect(seed_url) as conn:
        assert (
            conn.execute(
                "SELECT seq, role, content, extra::text FROM session_messages"
                " WHERE session_id = %s ORDER BY seq",
                [WITH_EXTRAS],
            ).fetchall()
            == converted_first
        )
        assert conn.execute(
            "SELECT count(*) FROM session_messages WHERE extra IS NOT NULL"
        ).fetchone() == (4,)

    with Store(seed_url) as store:
        history = store.get_history(WITH_EXTRAS, max_pairs=10)
    assert [(m.role, m.content) for m in history] == [
        ("user", "Weather in Oslo?"),
        ("assistant", ""),
        ("tool", "-3 °C"),
        ("assistant", "Cold."),
    ]
    assert [m.extra for m in history[:3]] == [
        {"name": "Zoë", "id": "m1"},
        {"tool_calls": [CALL]},
        {
            "tool_call_id": "c1",
            "meta": {"source": {"api": "met", "cached": True}, "tries": [1, 2.5, None]},
        },
    ]
    last = history[3].extra
    assert last is not None and last["count"] == int(HUGE_INT)
    assert last["score"] == float(PRECISE)  # a Python reader gets the nearest float


def test_verification_compares_extra_exactly(seed_url: str) -> None:
    build_seed(seed_url, extra_sessions=0)
    assert migrate_cli(seed_url, "--max-batches", "0").returncode == 0
    sid = uid(0x106)
    verify = conversion.QUERIES["verify_batch"]
    with psycopg.connect(seed_url) as conn:
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, messages) VALUES (%s, %s, %s::jsonb)",
            [sid, uid(5), f'[{{"role": "user", "content": "a", "name": "Zoë", "n": {PRECISE}}}]'],
        )
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content, extra)"
            " SELECT session_id, 0, 'user', 'a', (messages -> 0) - 'role' - 'content'"
            " FROM sessions WHERE session_id = %s",
            [sid],
        )
        assert conn.execute(verify, {"ids": [sid]}).fetchall() == []
        # The same extra after a trip through a Python float: one digit off is a mismatch.
        (extra,) = conn.execute(
            "SELECT extra FROM session_messages WHERE session_id = %s", [sid]
        ).fetchone() or (None,)
        assert extra == {"name": "Zoë", "n": float(PRECISE)}
        conn.execute(
            "UPDATE session_messages SET extra = %s WHERE session_id = %s", [Jsonb(extra), sid]
        )
        assert conn.execute(verify, {"ids": [sid]}).fetchall() == [(sid,)]
        conn.execute("UPDATE session_messages SET extra = NULL WHERE session_id = %s", [sid])
        assert conn.execute(verify, {"ids": [sid]}).fetchall() == [(sid,)]


def test_dry_run_reports_and_changes_nothing(seed_url: str) -> None:
    build_seed(seed_url, extra_sessions=3)
    with psycopg.connect(seed_url) as conn:
        before = conn.execute(
            "SELECT md5(string_agg(s::text, '|' ORDER BY session_id)) FROM sessions s"
        ).fetchone()

    result = migrate_cli(seed_url, "--dry-run", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TypeScript-era database" in out
    assert "users (5 rows)" in out and "sessions (8 rows)" in out
    assert "would create: session_messages" in out and QUARANTINE in out
    assert "would convert the histories of 8 sessions in 4 batches of 2" in out
    assert "7 quarantined" in out
    assert "would leave untouched: conversation_goal_journal, conversation_goals" in out
    with psycopg.connect(seed_url) as conn:
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
        after = conn.execute(
            "SELECT md5(string_agg(s::text, '|' ORDER BY session_id)) FROM sessions s"
        ).fetchone()
    assert before == after


def test_dry_run_on_other_databases(empty_database_url: str) -> None:
    head = migrate.head_revision()
    empty = migrate_cli(empty_database_url, "--dry-run")
    assert empty.returncode == 0, empty.stderr
    assert f"would upgrade the schema from empty to {head}" in empty.stdout
    migrate.upgrade(empty_database_url)
    current = migrate_cli(empty_database_url, "--dry-run")
    assert f"schema already at {head}" in current.stdout
    assert "convert" not in current.stdout


def test_interrupted_conversion_finishes_on_rerun(seed_url: str) -> None:
    seed = build_seed(seed_url)
    first = migrate_cli(seed_url, "--batch-size", "7", "--max-batches", "2")
    assert first.returncode == 0, first.stderr
    assert "stopped after 2 batches" in first.stdout
    with psycopg.connect(seed_url) as conn:
        left = conn.execute("SELECT count(*) FROM sessions WHERE messages IS NOT NULL").fetchone()
    assert left == (len(seed.histories) - 14,)

    second = migrate_cli(seed_url, "--batch-size", "7")
    assert second.returncode == 0, second.stderr
    assert "every history converted" in second.stdout
    assert_every_message_kept(seed_url, seed)
    assert ours_drift(seed_url) == []


def test_killed_conversion_finishes_on_rerun(seed_url: str) -> None:
    seed = build_seed(seed_url)
    adopted = migrate_cli(seed_url, "--max-batches", "0")
    assert adopted.returncode == 0, adopted.stderr
    last = max(seed.histories)
    env = clean_env(DATABASE_URL=seed_url)
    # Holding the last session keeps the run from finishing, so the kill lands mid-way.
    with psycopg.connect(seed_url) as holder:
        holder.execute("SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", [last])
        with sessionkeeper_until(
            "migrate", "--batch-size", "1", env=env, until="batch 1:", stream="stdout"
        ) as (child, _):
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        holder.rollback()
    with psycopg.connect(seed_url) as conn:
        left = conn.execute("SELECT count(*) FROM sessions WHERE messages IS NOT NULL").fetchone()
    assert left is not None and 1 <= left[0] < len(seed.histories)

    rerun = migrate_cli(seed_url)
    assert rerun.returncode == 0, rerun.stderr
    assert "every history converted" in rerun.stdout
    assert_every_message_kept(seed_url, seed)
    assert ours_drift(seed_url) == []


def wait_for_a_lock_wait(url: str, seconds: float = 60) -> None:
    """Until some backend waits for a lock (the state itself is polled, not a guess of how
    long it takes to arrive)."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no backend waited for the held lock")


def test_ctrl_c_stops_the_conversion_between_batches(seed_url: str) -> None:
    seed = build_seed(seed_url)
    adopted = migrate_cli(seed_url, "--max-batches", "0")
    assert adopted.returncode == 0, adopted.stderr
    second = sorted(seed.histories)[1]
    env = clean_env(DATABASE_URL=seed_url)
    # Holding the second session (batches go in session_id order) keeps batch 2 waiting
    # while Ctrl-C arrives: the run must finish that batch, then stop.
    with psycopg.connect(seed_url) as holder:
        holder.execute("SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", [second])
        child = subprocess.Popen(
            [sys.executable, "-m", "sessionkeeper", "migrate", "--batch-size", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("batch 1:"):
                    break
            # Ctrl-C only once batch 2 is really waiting for the held session: sent earlier, it
            # would stop the run before batch 2 began.
            wait_for_a_lock_wait(seed_url)
            child.send_signal(signal.SIGINT)
            holder.rollback()
            stdout, stderr = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    left = len(seed.histories) - 2
    assert (
        f"stopped after 2 batches when asked to stop: {left} sessions still hold legacy" in stdout
    )
    assert "interrupted: run migrate again" in stdout

    rerun = migrate_cli(seed_url)
    assert rerun.returncode == 0, rerun.stderr
    assert "every history converted" in rerun.stdout
    assert_every_message_kept(seed_url, seed)


def test_a_bot_writing_during_the_conversion_stops_it_cleanly(seed_url: str) -> None:
    seed = build_seed(seed_url, extra_sessions=0)
    assert migrate_cli(seed_url, "--max-batches", "0").returncode == 0
    with psycopg.connect(seed_url) as conn:
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content)"
            " VALUES (%s, 0, 'user', 'written by a bot too early')",
            [uid(0x101)],
        )
    result = migrate_cli(seed_url)
    assert result.returncode == 1
    assert "were bots running during the conversion?" in result.stderr
    with psycopg.connect(seed_url) as conn:
        left = conn.execute("SELECT count(*) FROM sessions WHERE messages IS NOT NULL").fetchone()
        rows = conn.execute("SELECT count(*) FROM session_messages").fetchone()
    assert left == (len(seed.histories),) and rows == (1,)


def test_timestamps_read_in_the_given_legacy_zone(seed_url: str) -> None:
    seed = build_seed(seed_url, extra_sessions=0)
    result = migrate_cli(seed_url, "--legacy-time-zone", "Europe/Berlin")
    assert result.returncode == 0, result.stderr
    berlin = ZoneInfo("Europe/Berlin")
    with psycopg.connect(seed_url) as conn:
        created = conn.execute(
            "SELECT created_at FROM users WHERE user_id = %s", [uid(1)]
        ).fetchone()
        naive_message = conn.execute(
            "SELECT created_at FROM session_messages WHERE session_id = %s AND seq = 1",
            [uid(0x104)],
        ).fetchone()
    assert created == (seed.users[0][7].replace(tzinfo=berlin),)
    assert naive_message == (datetime(2025, 3, 1, 10, tzinfo=berlin),)


def test_a_plain_upgrade_refuses_to_adopt(seed_url: str) -> None:
    # `sessionkeeper run` upgrades on start: a seed database must not be adopted by accident.
    build_seed(seed_url, extra_sessions=0)
    with pytest.raises(SchemaOutOfDate, match="run `sessionkeeper migrate`"):
        migrate.upgrade(seed_url)
    with psycopg.connect(seed_url) as conn:
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)


def test_unknown_columns_are_refused_before_anything_changes(seed_url: str) -> None:
    build_seed(seed_url, extra_sessions=0)
    with psycopg.connect(seed_url) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN timezone text")
    result = migrate_cli(seed_url)
    assert result.returncode == 1
    assert "column users.timezone is unknown to sessionkeeper" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("sessionkeeper: cannot adopt")
    with psycopg.connect(seed_url) as conn:
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('session_messages')").fetchone() == (None,)


def test_data_the_new_rules_refuse_stops_adoption_cleanly(seed_url: str) -> None:
    build_seed(seed_url, extra_sessions=0)
    with psycopg.connect(seed_url) as conn:
        conn.execute("INSERT INTO sessions (session_id, user_id) VALUES (%s, NULL)", [uid(0x999)])
    result = migrate_cli(seed_url)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sessionkeeper: cannot adopt this TypeScript-era database: column")
    assert '"user_id" of relation "sessions" contains null values' in last
    assert last.endswith("nothing was changed")
    with psycopg.connect(seed_url) as conn:
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
        assert conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'users'::regclass AND attname = 'created_at'"
        ).fetchone() == ("timestamp without time zone",)


def test_tables_without_history_or_migrations_are_refused(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("CREATE TABLE users (user_id uuid PRIMARY KEY)")
    result = migrate_cli(empty_database_url)
    assert result.returncode == 1
    assert "refusing to touch it" in result.stderr


def test_a_seed_without_the_optional_tables_is_adopted(empty_database_url: str) -> None:
    # An early seed: no linking, limits or usage yet; person ids without a persons table.
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            """
            CREATE TABLE users (
              user_id UUID PRIMARY KEY,
              channel VARCHAR(20) NOT NULL,
              channel_user_id VARCHAR(100) NOT NULL,
              person_id UUID,
              created_at TIMESTAMP DEFAULT NOW(),
              UNIQUE (channel, channel_user_id)
            );
            CREATE TABLE sessions (
              session_id UUID PRIMARY KEY,
              user_id UUID REFERENCES users(user_id),
              messages JSONB DEFAULT '[]',
              last_active TIMESTAMP DEFAULT NOW(),
              created_at TIMESTAMP DEFAULT NOW()
            );
            """
        )
        conn.execute(
            "INSERT INTO users (user_id, channel, channel_user_id, person_id)"
            " VALUES (%s, 'telegram', '7', %s)",
            [uid(1), uid(0xA)],
        )
    legacy.upgrade(empty_database_url)
    assert ours_drift(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        # The person id gets its persons row, so the link survives.
        assert conn.execute("SELECT person_id FROM persons").fetchall() == [(uid(0xA),)]
        assert conn.execute("SELECT authenticated, display_name FROM users").fetchall() == [
            (False, None)
        ]


def test_quarantine_rules() -> None:
    reason = legacy.quarantine_reason
    assert reason({"role": "user", "content": "hi"}, 10) is None
    assert reason({"role": "developer", "content": "hi"}, 10) == "unknown role"
    assert reason({"role": "user", "content": "a\x00b"}, 10) == "NUL in content"
    assert reason({"role": "user", "content": "ü" * 6}, 10) == "over 10 bytes"
    assert reason({"role": "user", "content": 5}, 10) == "content is not text"
    assert reason(["user", "hi"], 10) == "not a {role, content} object"


def test_message_times() -> None:
    utc, berlin = ZoneInfo("UTC"), ZoneInfo("Europe/Berlin")
    assert legacy.message_time("2025-03-01T09:00:00.250Z", berlin) == datetime(
        2025, 3, 1, 9, 0, 0, 250000, tzinfo=UTC
    )
    assert legacy.message_time("2025-03-01T09:00:00", berlin) == datetime(
        2025, 3, 1, 9, tzinfo=berlin
    )
    assert legacy.message_time(1740819600000, utc) == datetime(2025, 3, 1, 9, tzinfo=UTC)
    assert legacy.message_time("soon", utc) is None
    assert legacy.message_time(None, utc) is None
    assert legacy.message_time(True, utc) is None


@pytest.mark.slow
def test_a_hundred_thousand_messages(seed_url: str) -> None:
    with psycopg.connect(seed_url, autocommit=True) as conn:
        conn.execute(SEED_DDL)
        conn.execute(
            """
            INSERT INTO users (user_id, channel, channel_user_id)
            SELECT gen_random_uuid(), 'telegram', n::text FROM generate_series(1, 500) n;
            INSERT INTO sessions (session_id, user_id, messages, last_active, created_at)
            SELECT gen_random_uuid(), u.user_id,
                   (SELECT jsonb_agg(jsonb_build_object(
                        'role', CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END,
                        'content', 'message ' || i || ' of ' || s || ' ✨ ' || repeat('w', i * 7),
                        'timestamp', to_char(
                            timestamp '2025-01-01' + make_interval(mins => s, secs => i),
                            'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) ORDER BY i)
                    FROM generate_series(0, 39) i),
                   now()::timestamp, now()::timestamp
            FROM generate_series(1, 2520) s
            JOIN LATERAL (SELECT user_id FROM users ORDER BY channel_user_id
                          OFFSET s % 500 LIMIT 1) u ON true;
            """
        )
        conn.execute("SET TimeZone = 'UTC'")
        before = conn.execute(
            """
            SELECT count(*), md5(string_agg(
                s.session_id || ':' || (e.ord - 1) || ':' || (e.m ->> 'role') || ':'
                || (e.m ->> 'content') || ':' || ((e.m ->> 'timestamp')::timestamptz)::text,
                '|' ORDER BY s.session_id, e.ord))
            FROM sessions s, jsonb_array_elements(s.messages) WITH ORDINALITY e(m, ord)
            """
        ).fetchone()
    assert before is not None and before[0] == 100_800

    result = migrate_cli(seed_url)
    assert result.returncode == 0, result.stderr
    assert "100800 messages of 2520 sessions copied; 0 quarantined" in result.stdout

    with psycopg.connect(seed_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        after = conn.execute(
            """
            SELECT count(*), md5(string_agg(
                session_id || ':' || seq || ':' || role || ':' || content || ':'
                || created_at::text, '|' ORDER BY session_id, seq))
            FROM session_messages
            """
        ).fetchone()
    assert after == before
    assert ours_drift(seed_url) == []
