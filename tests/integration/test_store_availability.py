"""A database that is down or goes away gives DatabaseUnavailable, within bounded waits, and
no password ever shows in an error or a log line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from partition_support import make_calendar
from store_support import T0

from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.admin.migrate import upgrade
from store import AsyncStore, DatabaseUnavailable, SchemaOutOfDate, Store, StoreError

SECRET = "s3cr3t-Pa55"


def test_server_that_stops_gives_database_unavailable(
    embedded_server_factory: type[EmbeddedPostgres],
) -> None:
    server = embedded_server_factory()
    server.start()
    url = server.url("postgres")
    upgrade(url)
    make_calendar(url)  # partitions for T0
    with Store(url, max_size=2, pool_timeout=1.0, connect_timeout=1) as store:
        turn = store.begin_turn("telegram", "u", now=T0)
        server.stop()
        # The pooled connection is dead: the call fails fast, and so do the next ones, which
        # find no server to reconnect to within pool_timeout.
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable):
                store.finish_turn(turn, "q", "a")
        server.start()
        # The pool reconnects in the background, backing off between attempts; wait for it
        # (readiness, bounded) rather than for a guessed time.
        store.pool.wait(timeout=60)
        assert store.begin_turn("telegram", "u", now=T0).session_id == turn.session_id


def test_unreachable_server_raises_without_leaking_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Port 1 on loopback: connection refused at once, nothing listens there.
    url = f"postgresql://bot:{SECRET}@127.0.0.1:1/chat"
    with Store(url, pool_timeout=0.5, connect_timeout=1) as store:
        with pytest.raises(DatabaseUnavailable) as caught:
            store.begin_turn("telegram", "u")
        message = str(caught.value)
    assert SECRET not in message and SECRET not in repr(caught.value)
    cause = caught.value.__cause__
    assert cause is None or SECRET not in str(cause)
    assert SECRET not in caplog.text


def test_async_store_reports_unavailable_too() -> None:
    async def scenario() -> None:
        url = f"postgresql://bot:{SECRET}@127.0.0.1:1/chat"
        async with AsyncStore(url, pool_timeout=0.5, connect_timeout=1) as store:
            await store.check_rate_limit("6f1c7a0e-6a4b-4f52-9a53-1b8d4bb8e1a1")

    with pytest.raises(DatabaseUnavailable) as caught:
        asyncio.run(scenario())
    assert SECRET not in str(caught.value)


def test_unmigrated_database_says_so(empty_database_url: str) -> None:
    with Store(empty_database_url) as store, pytest.raises(SchemaOutOfDate, match="migrate"):
        store.begin_turn("telegram", "u")


def test_missing_url_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SESSIONKEEPER_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # No embedded server there either (test_connect.py covers finding one).
    monkeypatch.setenv("SESSIONKEEPER_EMBEDDED_DIR", str(tmp_path))
    with pytest.raises(StoreError, match=r"no database URL.*SESSIONKEEPER_DATABASE_URL='"):
        Store()
    with pytest.raises(StoreError, match="unknown store setting"):
        Store("postgresql:///x", max_sise=3)


def test_killed_connection_fails_one_call_and_the_pool_recovers(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, min_size=1, max_size=1) as store:
        turn = store.begin_turn("telegram", "u", now=T0)
        # The server ends the store's connection (a failover or an administrator would).
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with pytest.raises(DatabaseUnavailable):
            store.finish_turn(turn, "q", "a", now=T0)
        # The broken connection was discarded; the next call gets a new one and nothing of the
        # failed call was written.
        assert store.get_history(turn.session_id) == []  # type: ignore[arg-type]
        store.finish_turn(turn, "q", "a", now=T0)
        assert len(store.get_history(turn.session_id)) == 2  # type: ignore[arg-type]


def test_statement_timeout_bounds_a_wait_on_a_stuck_lock(database_url: str) -> None:
    with Store(database_url, statement_timeout_ms=200) as store:
        user = store.get_or_create_user("telegram", "u").user_id
        # Another client holds the user's row and does not let go (a stuck transaction).
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", [user])
            with pytest.raises(DatabaseUnavailable, match="57014"):  # query_canceled
                store.begin_turn("telegram", "u")
            blocker.rollback()
        assert store.begin_turn("telegram", "u").allowed
