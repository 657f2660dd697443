"""What a failover shows the store, provoked without a cluster (tests/integration/
test_failover.py runs the real one): a write reaching a read-only server, an answer lost after
the commit, two attempts of one turn racing and the reconnect back-off. (The previous release's
statements at this schema: tests/integration/test_previous_release.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from store_support import T0, count

from store import (
    AsyncStore,
    ConfigurationError,
    DatabaseUnavailable,
    ReadOnlyDatabase,
    Store,
    StoreConfig,
)
from store.client import Backoff

Conn = psycopg.Connection[Any]


def read_only_database(conn: Conn, on: bool) -> None:
    """New sessions of the test's database start read-only (as on a standby) or not; sessions
    already open keep what they started with."""
    database = sql.Identifier(conn.info.dbname)
    if on:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database)
        )
    else:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database)
        )


def test_write_to_a_read_only_server_raises_and_the_pool_reconnects(
    database_url: str, conn: Conn
) -> None:
    read_only_database(conn, True)
    with Store(database_url, min_size=3, max_size=3) as store:
        store.pool.wait(timeout=30)  # three connections, all read-only
        read_only_database(conn, False)  # the "new primary": fresh connections can write
        with pytest.raises(ReadOnlyDatabase, match="read-only") as caught:
            store.begin_turn("telegram", "u", now=T0)
        assert isinstance(caught.value, DatabaseUnavailable) and not caught.value.in_doubt
        assert isinstance(caught.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
        # Every connection of the read-only server was replaced, not only the one that failed:
        # each of the next calls writes.
        for n in range(6):
            turn = store.begin_turn("telegram", "u", now=T0)
            store.finish_turn(turn, f"q{n}", f"a{n}", now=T0)
    assert count(conn, "session_messages") == 12


def test_async_store_reports_a_read_only_server_too(database_url: str, conn: Conn) -> None:
    async def scenario() -> None:
        async with AsyncStore(database_url, min_size=2, max_size=2) as store:
            await store.pool.wait(timeout=30)
            read_only_database(conn, False)
            with pytest.raises(ReadOnlyDatabase):
                await store.get_or_create_user("telegram", "u", now=T0)
            for _ in range(4):
                await store.get_or_create_user("telegram", "u", now=T0)

    read_only_database(conn, True)
    asyncio.run(scenario())
    assert count(conn, "users") == 1


def test_finish_turn_called_again_stores_the_turn_once(database_url: str, conn: Conn) -> None:
    with Store(database_url) as store:
        turn = store.begin_turn("telegram", "u", now=T0)
        first = store.finish_turn(turn, "q", "a", input_tokens=7, now=T0)
        again = store.finish_turn(turn, "q", "a", input_tokens=7, now=T0)
        assert again == first
        assert count(conn, "session_messages") == 2 and count(conn, "usage_stats") == 1
        # A Turn reused for other messages (0.1.0 allowed it) stores them: another request.
        other = store.finish_turn(turn, "q2", "a2", input_tokens=7, now=T0)
        assert other.next_seq == first.next_seq + 2
        assert count(conn, "usage_stats") == 2


def test_two_attempts_of_one_turn_racing_store_it_once(database_url: str, conn: Conn) -> None:
    with Store(database_url, max_size=2) as store:
        turn = store.begin_turn("telegram", "u", now=T0)
        # Hold the session row, so that both attempts start (and take their snapshots, in
        # which no receipt exists yet) before either can write.
        with psycopg.connect(database_url) as blocker:
            blocker.execute(
                "SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", [turn.session_id]
            )
            with ThreadPoolExecutor(max_workers=2) as pool:
                attempts = [
                    pool.submit(store.finish_turn, turn, "q", "a", input_tokens=1, now=T0)
                    for _ in range(2)
                ]
                wait_until_waiting_on_locks(conn, 2)
                blocker.rollback()
                first, second = (attempt.result(timeout=30) for attempt in attempts)
    assert first == second
    assert count(conn, "session_messages") == 2 and count(conn, "usage_stats") == 1


def wait_until_waiting_on_locks(conn: Conn, backends: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if row and row[0] >= backends:
            return
        assert time.monotonic() < deadline, "the attempts never waited for the row"
        time.sleep(0.01)  # polling a condition, not time control


class AnswerDroppingProxy:
    """A loopback TCP proxy to the server's Unix socket that, when armed, lets the next
    statement run and commit but drops its answer (the connection closes as the server's
    ReadyForQuery arrives): the client cannot know whether it committed."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.armed.is_set():
                    # ReadyForQuery ends the answer; the commit is done by then.
                    if data.endswith(b"Z\x00\x00\x00\x05I"):
                        self.armed.clear()
                        self.dropped.set()
                        return
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not only close: the other direction's thread may be blocked in recv
            # on these sockets, and a close alone would not end the connection before it.
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        stop_listening(self.listener)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def proxy(database_url: str) -> Iterator[tuple[AnswerDroppingProxy, str]]:
    params = conninfo_to_dict(database_url)
    socket_path = str(Path(str(params["host"])) / f".s.PGSQL.{params.get('port') or 5432}")
    dropping = AnswerDroppingProxy(socket_path)
    url = make_conninfo(database_url, host="127.0.0.1", port=dropping.port, sslmode="disable")
    yield dropping, url
    dropping.close()


def test_a_lost_answer_is_in_doubt_and_the_retry_stores_the_turn_once(
    proxy: tuple[AnswerDroppingProxy, str], conn: Conn
) -> None:
    dropping, url = proxy
    with Store(url, min_size=1, max_size=1) as store:
        turn = store.begin_turn("telegram", "u", now=T0)
        dropping.armed.set()
        with pytest.raises(DatabaseUnavailable) as caught:
            store.finish_turn(turn, "q", "a", input_tokens=5, now=T0)
        assert dropping.dropped.is_set()
        assert caught.value.in_doubt
        assert "may have been stored" in str(caught.value)
        assert "same Turn" in str(caught.value)
        # It had committed; the retry finds the receipt and writes nothing more.
        assert count(conn, "session_messages") == 2
        done = store.finish_turn(turn, "q", "a", input_tokens=5, now=T0)
    assert (done.appended, done.next_seq) == (2, 2)
    assert count(conn, "session_messages") == 2 and count(conn, "usage_stats") == 1


def test_an_error_before_anything_was_sent_is_not_in_doubt() -> None:
    url = "postgresql://bot@127.0.0.1:1/chat"
    with Store(url, pool_timeout=0.3) as store, pytest.raises(DatabaseUnavailable) as caught:
        store.get_history("6f1c7a0e-6a4b-4f52-9a53-1b8d4bb8e1a1")
    assert not caught.value.in_doubt


def stop_listening(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
    listener.close()


class RefusingServer:
    """Counts connection attempts on a loopback port and ends each at once."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.attempts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.attempts += 1
            client.close()


def test_the_pool_retries_connecting_on_the_configured_back_off() -> None:
    server = RefusingServer()
    url = f"postgresql://bot@127.0.0.1:{server.port}/chat?sslmode=disable"
    try:
        with Store(url, reconnect_delay=0.05, reconnect_max_delay=0.1):
            deadline = time.monotonic() + 30
            # psycopg_pool's own timing (1 s, doubling) makes 3 attempts in the first 4 s.
            while server.attempts < 10:
                assert time.monotonic() < deadline, server.attempts
                time.sleep(0.01)  # polling a condition, not time control
    finally:
        stop_listening(server.listener)


def test_the_back_off_doubles_up_to_its_cap() -> None:
    attempt = Backoff(StoreConfig(reconnect_delay=0.2, reconnect_max_delay=1.0), timeout=300)
    delays = []
    for _ in range(6):
        attempt.update_delay(time.monotonic())
        delays.append(attempt.delay)
    assert 0.18 <= delays[0] <= 0.22  # psycopg_pool's jitter: 10 %
    assert delays[1] == pytest.approx(2 * delays[0]) and delays[-1] == 1.0
    with pytest.raises(ConfigurationError, match="reconnect_delay"):
        StoreConfig(reconnect_delay=0)
