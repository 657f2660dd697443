"""The store's operations, sync and async, against real PostgreSQL: seed parity and the turn."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import uvloop
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)

from store import AsyncStore, ConfigurationError, Store, StoreConfig


def test_begin_turn_creates_user_and_session_then_finds_them(store: Store) -> None:
    first = store.begin_turn("telegram", 42, display_name="Ann", now=T0)
    assert first.allowed and first.user.created and first.session_created
    assert first.user.channel_user_id == "42" and first.user.display_name == "Ann"
    assert first.history == [] and first.started_at == T0
    store.finish_turn(first, "hello", "hi Ann", input_tokens=10, output_tokens=3, now=T0)

    second = store.begin_turn("telegram", "42", now=T0 + timedelta(minutes=5))
    assert not second.user.created and not second.session_created
    assert second.user.user_id == first.user.user_id
    assert second.session_id == first.session_id
    assert [(m.role, m.content) for m in second.history] == [
        ("user", "hello"),
        ("assistant", "hi Ann"),
    ]
    assert second.history[0].timestamp == T0


def test_begin_turn_writes_the_user_row_only_when_it_changes(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    def version() -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT xmin::text, display_name, authenticated, updated_at FROM users"
        ).fetchone()
        assert row is not None
        return tuple(row)

    store.begin_turn("telegram", "5", display_name="Ann", now=T0)
    created = version()
    store.begin_turn("telegram", "5", now=T0 + timedelta(minutes=1))
    store.begin_turn("telegram", "5", display_name="Ann", now=T0 + timedelta(minutes=2))
    assert version() == created  # nothing changed: no new row version, updated_at kept

    renamed = store.begin_turn("telegram", "5", display_name="Bo", now=T0 + timedelta(minutes=3))
    assert renamed.user.display_name == "Bo" and not renamed.user.created
    assert version()[1:] == ("Bo", True, T0 + timedelta(minutes=3))

    conn.execute("UPDATE users SET authenticated = false")
    store.begin_turn("telegram", "5", now=T0 + timedelta(minutes=4))
    assert version()[1:] == ("Bo", True, T0 + timedelta(minutes=4))


def test_finish_turn_records_usage_and_last_active(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    turn = store.begin_turn("whatsapp", "+4912345", now=T0)
    done = store.finish_turn(
        turn, "q", "a", input_tokens=7, output_tokens=5, cached_tokens=2, now=T0 + timedelta(1)
    )
    assert done.appended == 2 and done.trimmed == 0 and done.user_id == turn.user.user_id
    row = conn.execute(
        "SELECT channel, input_tokens, output_tokens, cached_tokens FROM usage_stats"
    ).fetchone()
    assert row == ("whatsapp", 7, 5, 2)
    last_active = conn.execute("SELECT last_active FROM sessions").fetchone()
    assert last_active == (T0 + timedelta(1),)


def test_history_is_trimmed_to_max_pairs_by_finish_turn(store: Store) -> None:
    turn = store.begin_turn("telegram", "7", now=T0)
    for i in range(5):
        store.finish_turn(turn, f"q{i}", f"a{i}", max_pairs=3, now=T0)
    history = store.get_history(turn.session_id, max_pairs=10)  # type: ignore[arg-type]
    assert [m.content for m in history] == ["q2", "a2", "q3", "a3", "q4", "a4"]
    assert [m.seq for m in history] == [4, 5, 6, 7, 8, 9]


def test_seed_functions_in_sequence(store: Store, conn: psycopg.Connection[Any]) -> None:
    user = store.get_or_create_user("telegram", "1001", now=T0)
    again = store.get_or_create_user("telegram", "1001", display_name="Bo", now=T0)
    assert user.created and not again.created and again.user_id == user.user_id
    assert again.display_name == "Bo"
    session = store.get_or_create_session(user.user_id, now=T0)
    assert session.created and store.get_or_create_session(user.user_id, now=T0) == (
        session.__class__(session.session_id, user.user_id, False)
    )
    messages = [
        {"role": "user", "content": f"m{i}", "timestamp": (T0 + timedelta(seconds=i)).isoformat()}
        for i in range(50)
    ]
    assert store.append_messages(session.session_id, messages).appended == 50
    assert store.trim_session_history(session.session_id) == 10  # default: 20 pairs
    assert count(conn, "session_messages") == 40
    assert store.trim_session_history(session.session_id, 5) == 30
    assert store.check_rate_limit(user.user_id, now=T0)
    stat = store.track_usage(user.user_id, "telegram", 1, 2, 3, now=T0)
    assert count(conn, "usage_stats", f"stat_id = '{stat}' AND output_tokens = 2") == 1


def test_stale_session_is_replaced_and_carries_last_pairs(store: Store) -> None:
    turn = store.begin_turn("telegram", "5", now=T0)
    for i in range(4):
        store.finish_turn(turn, f"q{i}", f"a{i}", now=T0)
    later = T0 + store.config.idle_timeout + timedelta(seconds=1)
    fresh = store.begin_turn("telegram", "5", now=later)
    assert fresh.session_created and fresh.session_id != turn.session_id
    # carry_over_pairs defaults to 2: the last two pairs come along, renumbered from 0.
    assert [m.content for m in fresh.history] == ["q2", "a2", "q3", "a3"]
    assert [m.seq for m in fresh.history] == [0, 1, 2, 3]
    done = store.finish_turn(fresh, "q4", "a4", now=later)
    assert done.next_seq == 6


def test_idle_timeout_and_carry_over_are_configurable(database_url: str) -> None:
    with Store(database_url, idle_timeout=timedelta(minutes=5), carry_over_pairs=0) as store:
        turn = store.begin_turn("telegram", "5", now=T0)
        store.finish_turn(turn, "q", "a", now=T0)
        same = store.begin_turn("telegram", "5", now=T0 + timedelta(minutes=4))
        fresh = store.begin_turn("telegram", "5", now=T0 + timedelta(minutes=10))
    assert same.session_id == turn.session_id
    assert fresh.session_created and fresh.history == []


def test_old_sessions_stay_after_a_new_one_starts(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    # Soft delete: the online path never deletes a session or a user.
    for day in range(3):
        turn = store.begin_turn("telegram", "9", now=T0 + timedelta(days=day))
        store.finish_turn(turn, "q", "a", now=T0 + timedelta(days=day))
    assert count(conn, "sessions") == 3
    assert count(conn, "users") == 1


def test_proactive_users(store: Store) -> None:
    tg = store.get_or_create_user("telegram", "555", now=T0)
    wa = store.get_or_create_user("whatsapp", "+1", now=T0)
    store.register_proactive_user("chat-9", wa.user_id)
    users = {u.user_id: u.chat_id for u in store.load_users_from_db()}
    assert users == {tg.user_id: "555", wa.user_id: "chat-9"}
    store.register_proactive_user(777, tg.user_id)
    assert {u.chat_id for u in store.load_users_from_db()} == {"777", "chat-9"}


def test_proactive_channel_setting_picks_the_implicit_channel(database_url: str) -> None:
    with Store(database_url, max_size=1, proactive_channel="whatsapp") as whatsapp_bot:
        tg = whatsapp_bot.get_or_create_user("telegram", "555", now=T0)
        wa = whatsapp_bot.get_or_create_user("whatsapp", "+1", now=T0 + timedelta(seconds=1))
        early = whatsapp_bot.get_or_create_user("whatsapp", "+2", now=T0 - timedelta(days=1))
        assert [u.user_id for u in whatsapp_bot.load_users_from_db()] == [early.user_id, wa.user_id]
        whatsapp_bot.register_proactive_user("chat-tg", tg.user_id)
        assert [(u.user_id, u.chat_id) for u in whatsapp_bot.load_users_from_db()] == [
            (early.user_id, "+2"),
            (tg.user_id, "chat-tg"),
            (wa.user_id, "+1"),
        ]


def test_pool_statistics_are_readable(store: Store) -> None:
    store.get_or_create_user("telegram", "1")
    stats = store.pool_stats()
    assert stats["pool_max"] == 4 and stats["requests_num"] >= 1


def test_module_level_functions_use_the_default_store(database_url: str) -> None:
    import store as api

    api.init_database(database_url, max_size=2)
    try:
        assert api.get_pool().max_size == 2
        user = api.get_or_create_user("telegram", "77")
        session = api.get_or_create_session(user.user_id)
        api.append_messages(session.session_id, [{"role": "user", "content": "hey"}])
        assert [m.content for m in api.get_history(session.session_id)] == ["hey"]
        turn = api.begin_turn("telegram", "77")
        assert turn.session_id == session.session_id and turn.history[0].content == "hey"
        assert api.pool_stats()["pool_max"] == 2 and api.pool_stats()["requests_num"] >= 5
    finally:
        api.close_database()
    with pytest.raises(ConfigurationError, match="init_database"):
        api.pool_stats()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_async_store_runs_the_same_operations(database_url: str, loop: str) -> None:
    # uvloop (the optional extra docs/internals.md suggests for AsyncStore bots) runs it too.
    async def scenario() -> list[str]:
        async with AsyncStore(database_url, max_size=2) as store:
            turn = await store.begin_turn("telegram", "a1", now=T0)
            await store.finish_turn(turn, "ping", "pong", now=T0)
            code = await store.create_link_code(turn.user.user_id, now=T0)
            other = await store.get_or_create_user("whatsapp", "a2")
            await store.redeem_link_code(other.user_id, code.code, now=T0)
            linked = await store.get_linked_users(other.user_id)
            again = await store.begin_turn("telegram", "a1", now=T0)
            assert {u.user_id for u in linked} == {turn.user.user_id, other.user_id}
            assert store.pool_stats()["pool_max"] == 2
            return [m.content for m in again.history]

    run = asyncio.run if loop == "asyncio" else uvloop.run
    assert run(scenario()) == ["ping", "pong"]


def test_settings_come_from_the_environment(database_url: str) -> None:
    environ = {
        "SESSIONKEEPER_MAX_SIZE": "3",
        "SESSIONKEEPER_IDLE_TIMEOUT": "90",
        "SESSIONKEEPER_RATE_PER_DAY": "500",
        "SESSIONKEEPER_RATE_PER_MINUTE": "none",
        "SESSIONKEEPER_CHANNELS": "telegram, whatsapp",
        "SESSIONKEEPER_DURABLE_RATE_LIMITS": "true",
    }
    config = StoreConfig.from_env(environ, max_idle=60.0)
    assert config.max_size == 3 and config.max_idle == 60.0
    assert config.idle_timeout == timedelta(seconds=90)
    assert config.rate_windows() == ([86400], [500])
    assert config.channels == frozenset({"telegram", "whatsapp"}) and config.durable_rate_limits
    with Store(database_url, config=config, min_size=0) as store:
        assert store.pool_stats()["pool_max"] == 3 and store.config.min_size == 0
    for bad in ({"SESSIONKEEPER_MAX_SIZE": "many"}, {"SESSIONKEEPER_MAX_SIZE": "0"}):
        with pytest.raises(ConfigurationError, match=r"MAX_SIZE|max_size"):
            StoreConfig.from_env(bad)
