"""The store through PgBouncer in transaction mode (the Debian package, run for real).

Transaction pooling hands each transaction to whichever server connection is free, so nothing
may outlive a transaction: every store call is one autocommit statement, the rate limit's
``synchronous_commit`` is set with ``SET LOCAL`` semantics inside it, and prepared statements are
turned off (PgBouncer 1.18 cannot carry them; 1.21+ can, with ``max_prepared_statements``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from store_support import T0, count
from test_store_concurrency import in_threads
from tool_support import unavailable

from store import Store

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SERVER_CONNECTIONS = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def bouncer_url(database_url: str) -> Iterator[str]:
    if not os.access(PGBOUNCER, os.X_OK):
        unavailable("pgbouncer is not installed (apt-get install pgbouncer)")
    target = conninfo_to_dict(database_url)
    directory = Path(tempfile.mkdtemp(prefix="sk-pgbouncer-"))
    port = _free_port()
    server = " ".join(
        f"{key}={target[key]}" for key in ("host", "port", "user", "password") if target.get(key)
    )
    # Even "trust" needs the user listed in the auth file.
    (directory / "users.txt").write_text(f'"{target.get("user") or "postgres"}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\n{target['dbname']} = {server}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory}/users.txt\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n"
        "max_client_conn = 200\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {directory}/pgbouncer.log\npidfile = {directory}/pgbouncer.pid\n"
    )
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = os.environ.get("SESSIONKEEPER_EMBEDDED_USER", "sessionkeeper")
        entry = pwd.getpwnam(user)
        for path in (directory, *directory.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        command[1:1] = ["-u", user]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = make_conninfo(
        "", host="127.0.0.1", port=port, dbname=target["dbname"], user=target.get("user")
    )
    try:
        _wait_until_accepting(url, process, directory / "pgbouncer.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_accepting(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    error: Exception | None = None
    for _ in range(100):
        if process.poll() is not None:
            break
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            error = exc
            time.sleep(0.05)  # readiness polling, not time control
    output = process.stdout.read().decode() if process.stdout and process.poll() else ""
    log_text = log.read_text() if log.exists() else ""
    pytest.fail(f"pgbouncer did not accept connections: {error}\n{output}\n{log_text}")


def test_turns_through_transaction_pooling(bouncer_url: str, conn: psycopg.Connection[Any]) -> None:
    users = 8
    with Store(
        bouncer_url, max_size=16, prepare_threshold=None, statement_timeout_ms=None
    ) as store:

        def chat(i: int) -> None:
            for n in range(3):
                turn = store.begin_turn("telegram", f"user-{i % users}", now=T0)
                assert turn.allowed
                store.finish_turn(turn, f"q{i}.{n}", f"a{i}.{n}", input_tokens=1, now=T0)

        in_threads(16, chat)  # 16 clients share 2 server connections
        user = store.get_or_create_user("telegram", "user-0").user_id
        code = store.create_link_code(user, now=T0)
        other = store.get_or_create_user("whatsapp", "x").user_id
        store.redeem_link_code(other, code.code, now=T0)
        assert len(store.get_linked_users(user)) == 2
    assert count(conn, "users", "channel = 'telegram'") == users
    assert count(conn, "sessions") == users
    assert count(conn, "session_messages") == 16 * 3 * 2
    assert count(conn, "usage_stats") == 16 * 3
    # Six turns per user: the minute window counted each once, on whichever server connection.
    assert count(conn, "rate_limits", "window_seconds = 60 AND request_count = 6") == users


def test_prepared_statements_stay_off_for_old_pgbouncer(bouncer_url: str) -> None:
    # With prepare_threshold=None psycopg never names a statement, so a later transaction on
    # another server connection cannot miss one; 40 calls over 2 connections prove it.
    with Store(bouncer_url, max_size=4, prepare_threshold=None, statement_timeout_ms=None) as store:
        user = store.get_or_create_user("telegram", "p").user_id
        for _ in range(40):
            store.get_or_create_session(user, now=T0)
