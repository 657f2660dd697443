"""store.ProactiveUsers / AsyncProactiveUsers: the proactive list in a bot's memory, kept
current by the proactive_reload job's NOTIFY and by reloading after a reconnect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from sessionkeeper.jobs import proactive_reload
from store import AsyncProactiveUsers, ProactiveList, ProactiveUser, ProactiveUsers
from store.proactive import NOTIFY_CHANNEL, newer

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WAIT = 10.0  # seconds; an event wait, returned from as soon as the list moves


def telegram_user(conn: Conn, telegram_id: int) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO users (channel, channel_user_id, authenticated)"
        " VALUES ('telegram', %s, true) RETURNING user_id",
        [str(telegram_id)],
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def run_the_job(conn: Conn) -> int:
    result = proactive_reload.run(conn, proactive_reload.Settings(), NOW)
    return int(result.details["version"])


def listener_pids(conn: Conn) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'sessionkeeper-proactive'"
            " AND datname = current_database()"
        ).fetchall()
    ]


@pytest.fixture
def users(database_url: str) -> Iterator[ProactiveUsers]:
    with ProactiveUsers(database_url) as opened:
        yield opened


def test_before_any_publication_the_list_is_read_from_the_users(
    conn: Conn, database_url: str
) -> None:
    alice = telegram_user(conn, 1001)
    with ProactiveUsers(database_url) as users:
        assert users.version == 0
        assert list(users) == [ProactiveUser(alice, "1001")]
        assert alice in users and str(alice) in users and uuid.uuid4() not in users
        assert "not a uuid" not in users
        assert users.chat_id(alice) == "1001"


def test_the_list_follows_the_job(conn: Conn, users: ProactiveUsers) -> None:
    alice = telegram_user(conn, 1001)
    first = run_the_job(conn)
    assert users.wait_for_version(first, WAIT)
    assert users.snapshot() == ProactiveList(first, (ProactiveUser(alice, "1001"),))

    bob = telegram_user(conn, 2002)
    conn.execute("INSERT INTO proactive_users (user_id, chat_id) VALUES (%s, 'chat-a')", [alice])
    second = run_the_job(conn)
    assert second == first + 1
    assert users.wait_for_version(second, WAIT)
    assert users.chat_id(alice) == "chat-a" and users.chat_id(bob) == "2002"
    assert len(users) == 2

    # A run that changes nothing announces nothing.
    assert run_the_job(conn) == second
    assert not users.wait_for_version(second + 1, 0.2)


def test_erasure_drops_the_user_from_the_list_at_once(
    conn: Conn, database_url: str, users: ProactiveUsers
) -> None:
    alice, bob = telegram_user(conn, 1001), telegram_user(conn, 2002)
    version = run_the_job(conn)
    assert users.wait_for_version(version, WAIT) and alice in users
    conn.execute("SELECT * FROM sk_forget(%s, NULL)", [alice])
    assert users.wait_for_version(version + 1, WAIT)
    assert alice not in users and bob in users


def test_after_a_reconnect_the_list_is_reloaded(conn: Conn, users: ProactiveUsers) -> None:
    alice = telegram_user(conn, 1001)
    version = run_the_job(conn)
    assert users.wait_for_version(version, WAIT)
    # The list moves while no notification is sent (as if the bot missed it while away):
    # only the reload after reconnecting can bring it.
    conn.execute("DELETE FROM proactive_user_list")
    conn.execute("UPDATE proactive_list_state SET version = version + 1")
    (pid,) = listener_pids(conn)
    conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # waits for its end

    assert users.wait_for_version(version + 1, WAIT)
    assert alice not in users and len(users) == 0
    (new_pid,) = listener_pids(conn)
    assert new_pid != pid
    # The new connection listens: the next publication arrives too.
    again = run_the_job(conn)
    assert users.wait_for_version(again, WAIT) and alice in users


def test_the_async_twin_follows_the_job_and_reconnects(conn: Conn, database_url: str) -> None:
    async def scenario() -> None:
        async with AsyncProactiveUsers(database_url) as users:
            assert users.version == 0 and len(users) == 0
            alice = telegram_user(conn, 1001)
            version = run_the_job(conn)
            assert await users.wait_for_version(version, WAIT)
            assert alice in users

            conn.execute("DELETE FROM proactive_user_list")
            conn.execute("UPDATE proactive_list_state SET version = version + 1")
            (pid,) = listener_pids(conn)
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # waits for its end
            assert await users.wait_for_version(version + 1, WAIT)
            assert alice not in users
            assert not await users.wait_for_version(version + 2, 0.2)
            task = users._task
        assert task is not None and task.done()

    asyncio.run(scenario())


def test_closing_ends_the_listening_connection(conn: Conn, database_url: str) -> None:
    users = ProactiveUsers(database_url)
    assert len(listener_pids(conn)) == 1
    listening = users._conn
    users.close()
    users.close()  # a second close is harmless
    # (The server's backend may linger a moment after the client closed; the client's side
    # is what close() promises.)
    assert listening is not None and listening.closed
    assert not users._thread.is_alive()


def test_the_channel_name_is_the_one_the_database_notifies_on(conn: Conn) -> None:
    row = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'sk_publish_proactive_list'"
    ).fetchone()
    assert row is not None and f"'{NOTIFY_CHANNEL}'" in row[0]
    assert newer("3", 2) and not newer("2", 2) and newer("garbled", 7)
