"""store.connection without a server: which addresses get ``sslmode=verify-full``, what a
refused connection becomes, and that no password survives in a message or an exception chain.
Also where the URL comes from (the settings loader) and how a bot finds the embedded server."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import store
from store import local_server, settings
from store.client import raise_store_error
from store.connection import redact, refusal, scrub, secure_conninfo

# Each URL with the environment it is read in and the sslmode the store must use (None: left
# to libpq, because every server it names is a Unix socket or loopback).
SERVICE_FILE = """\
# a comment
[prod]
host=db.example
dbname=chat

[local]
host=/run/postgresql

[loopback]
hostaddr=127.0.0.1

[pinned]
host=db.example
sslmode=require
"""

TLS_CASES = [
    # host
    ("postgresql://bot@db.example/chat", {}, "verify-full"),
    ("host=db.example dbname=chat", {}, "verify-full"),
    ("postgresql://bot@10.0.0.5/chat", {}, "verify-full"),
    ("postgresql://bot@localhost/chat", {}, None),
    ("postgresql://bot@127.0.0.1/chat", {}, None),
    ("postgresql://bot@127.0.0.2/chat", {}, None),
    ("postgresql://bot@[::1]/chat", {}, None),
    ("host=::1 dbname=chat", {}, None),
    ("postgresql://bot@localhost.example/chat", {}, "verify-full"),
    ("postgresql:///chat?host=/run/postgresql", {}, None),
    ("postgresql:///chat", {}, None),
    # hostaddr: libpq connects to it; host only names the certificate
    ("hostaddr=10.0.0.5 dbname=chat", {}, "verify-full"),
    ("host=localhost hostaddr=10.0.0.5 dbname=chat", {}, "verify-full"),
    ("host=db.example hostaddr=127.0.0.1 dbname=chat", {}, None),
    # service (pg_service.conf)
    ("service=prod", {}, "verify-full"),
    ("postgresql:///chat?service=prod", {}, "verify-full"),
    ("service=local", {}, None),
    ("service=loopback", {}, None),
    ("service=pinned", {}, None),  # its own sslmode=require wins (libpq reads it)
    ("service=unknown", {}, "verify-full"),  # cannot tell where it points: verify
    # the PG* environment variables
    ("postgresql:///chat", {"PGHOST": "db.example"}, "verify-full"),
    ("postgresql:///chat", {"PGHOST": "/run/postgresql"}, None),
    ("postgresql:///chat", {"PGHOSTADDR": "10.0.0.5"}, "verify-full"),
    ("postgresql://bot@localhost/chat", {"PGHOSTADDR": "10.0.0.5"}, "verify-full"),
    ("postgresql:///chat", {"PGSERVICE": "prod"}, "verify-full"),
    ("postgresql://bot@db.example/chat", {"PGHOST": "127.0.0.1"}, "verify-full"),
    # several hosts: one remote is enough
    ("postgresql://bot@127.0.0.1,db.example/chat", {}, "verify-full"),
    ("host=/run/postgresql,db.example dbname=chat", {}, "verify-full"),
    ("postgresql://bot@127.0.0.1:5432,localhost:5433/chat", {}, None),
    # the user's choice wins
    ("postgresql://bot@db.example/chat?sslmode=disable", {}, "disable"),
    ("host=db.example sslmode=require", {}, "require"),
    ("postgresql://bot@db.example/chat", {"PGSSLMODE": "require"}, None),
    ("postgresql://bot@db.example/chat?requiressl=1", {}, "require"),  # libpq maps it
]


@pytest.mark.parametrize(("url", "environ", "expected"), TLS_CASES)
def test_tls_is_verified_for_every_remote_form_of_address(
    url: str, environ: dict[str, str], expected: str | None, tmp_path: Path
) -> None:
    (tmp_path / "pg_service.conf").write_text(SERVICE_FILE)
    environ = {"PGSERVICEFILE": str(tmp_path / "pg_service.conf"), **environ}
    params = conninfo_to_dict(secure_conninfo(url, environ=environ))
    assert params.get("sslmode") == expected
    assert params["application_name"] == "sessionkeeper"


def test_the_service_file_is_found_in_pgsysconfdir(tmp_path: Path) -> None:
    (tmp_path / "pg_service.conf").write_text(SERVICE_FILE)
    environ = {"PGSERVICEFILE": str(tmp_path / "none.conf"), "PGSYSCONFDIR": str(tmp_path)}
    assert "sslmode" not in conninfo_to_dict(secure_conninfo("service=local", environ=environ))
    remote = conninfo_to_dict(secure_conninfo("service=prod", environ=environ))
    assert remote["sslmode"] == "verify-full"


SECRETS = ["zq x9", "abc def123", "it's9z", 'zay "hiq"', "p@ss w0rdq", "tr\\ick'yq"]


@pytest.mark.parametrize("secret", SECRETS)
def test_passwords_with_spaces_and_quotes_are_redacted(secret: str) -> None:
    escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
    texts = [
        f"postgresql://bot:{secret}@db.example:5432/chat",
        f"cannot reach postgresql://bot:{secret}@db.example/chat today",
        f"host=db.example password='{escaped}' user=bot",
        f"host=db.example password={secret} user=bot",
        f"host=db.example sslpassword='{escaped}' sslkey=/k.pem",
        f"host=db.example sslpassword={secret}",
        f"postgresql://db.example/chat?sslmode=verify-full&password={secret}&user=bot",
        f"PGPASSWORD={secret}",
    ]
    for text in texts:
        shown = redact(text)
        assert "***" in shown, text
        for word in secret.split():
            assert word not in shown, (text, shown)
    # What is not a password stays readable.
    assert "db.example" in redact(texts[0]) and "user=bot" in redact(texts[2])


def test_known_secrets_are_redacted_wherever_they_appear() -> None:
    message = 'missing "=" after "def123" in connection info string; abc def123 again'
    shown = redact(message, known=["abc def123"])
    assert "def123" not in shown and "abc" not in shown
    assert 'missing "="' in shown


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://bot:zq x9@db.example/chat", "zq x9"),
        ("host=db.example password=abc def123 user=bot", "abc def123"),
        ("host=db.example password='it''s broken", "it''s broken"),
        ("postgresql://bot:s3cret@db.example/chat?sslpassword=k eyq&sslmode=on", "k eyq"),
    ],
)
def test_an_invalid_url_is_refused_without_its_password(url: str, secret: str) -> None:
    with pytest.raises(store.ConfigurationError, match="invalid database URL") as caught:
        secure_conninfo(url)
    error = caught.value
    for word in [w for w in re.split(r"[\s']+", secret) if len(w) > 2]:
        assert word not in str(error), str(error)
    assert "s3cret" not in str(error) and "db.example" in str(error)
    # Nothing chained holds the URL either.
    assert (error.__cause__, error.__context__) == (None, None)


def test_scrub_redacts_the_whole_exception_chain() -> None:
    secret = "pa ss"
    try:
        try:
            try:
                raise psycopg.OperationalError(f"could not connect: password='{secret}' host=db")
            except psycopg.OperationalError as inner:
                raise ValueError(f"while using postgresql://bot:{secret}@db/x") from inner
        except ValueError:
            raise RuntimeError(f"context: sslpassword={secret}") from None
    except RuntimeError as error:
        scrub(error, known=[secret])
        chain: list[BaseException] = [error]
        while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(nxt)
        assert len(chain) == 3
        for link in chain:
            assert "pa ss" not in str(link) and "***" in str(link)


def test_the_store_scrubs_the_driver_error_it_chains() -> None:
    original = psycopg.OperationalError("lost postgresql://bot:pa ss@db/x")
    with pytest.raises(store.DatabaseUnavailable) as caught:
        raise_store_error(original)
    assert caught.value.__cause__ is original
    assert "pa ss" not in str(original) and "pa ss" not in str(caught.value)


@pytest.mark.parametrize(
    ("message", "kind", "advice"),
    [
        (
            'connection to server at "db.example" (10.0.0.5), port 5432 failed: FATAL:  '
            'password authentication failed for user "bot"',
            store.AuthenticationFailed,
            "password",
        ),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "bot", database "chat", '
            "SSL encryption",
            store.AuthenticationFailed,
            "pg_hba.conf",
        ),
        ('FATAL:  database "chat" does not exist', store.DatabaseMissing, "createdb"),
        ("server does not support SSL, but SSL was required", store.TLSFailed, "sslmode="),
        (
            'root certificate file "/root/.postgresql/root.crt" does not exist',
            store.TLSFailed,
            "sslrootcert=",
        ),
        (
            "SSL error: certificate verify failed",
            store.TLSFailed,
            "sslrootcert",
        ),
        (
            'server certificate for "other.example" does not match host name "db.example"',
            store.TLSFailed,
            "sslmode=verify-ca",
        ),
    ],
)
def test_refusals_are_typed_and_say_what_to_set(
    message: str, kind: type[store.ConnectionRefused], advice: str
) -> None:
    conninfo = "host=db.example dbname=chat user=bot password='pa ss'"
    refused = refusal(psycopg.OperationalError(f"connection failed: {message}"), conninfo)
    assert type(refused) is kind and isinstance(refused, store.DatabaseUnavailable)
    assert advice in str(refused) and "chat on db.example" in str(refused)
    assert "pa ss" not in str(refused)


def test_a_server_that_is_down_is_no_refusal() -> None:
    down = psycopg.OperationalError('connection to server at "db" failed: Connection refused')
    assert refusal(down, "host=db") is None
    assert refusal(ValueError("x"), "host=db") is None


# -- where the URL comes from ------------------------------------------------------------------


def test_the_settings_loader_resolves_the_url(tmp_path: Path) -> None:
    config = tmp_path / "sk.toml"
    config.write_text('database_url = "postgresql://file/db"\n')
    both = {"SESSIONKEEPER_DATABASE_URL": "postgresql://prefixed/db", "DATABASE_URL": "x"}
    assert settings.database_url(settings.Source(both, config)) == "postgresql://prefixed/db"
    plain = {"DATABASE_URL": "postgresql://plain/db"}
    assert settings.database_url(settings.Source(plain, config)) == "postgresql://plain/db"
    assert settings.database_url(settings.Source({}, config)) == "postgresql://file/db"
    assert settings.database_url(settings.Source({"DATABASE_URL": "  "})) is None
    config.write_text("database_url = 5\n")
    with pytest.raises(settings.SettingError, match="database_url in"):
        settings.database_url(settings.Source({}, config))


# -- finding the embedded server ---------------------------------------------------------------


def test_a_bot_finds_the_socket_of_a_running_embedded_server(tmp_path: Path) -> None:
    directory = local_server.socket_dir(tmp_path)
    directory.mkdir()
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(directory / local_server.SOCKET_FILE))
        found = local_server.discover_url({"SESSIONKEEPER_EMBEDDED_DIR": str(tmp_path)})
    assert found == f"postgresql://postgres@/sessionkeeper?host={directory}"


def test_a_server_of_release_0_2_0_is_found_in_its_data_directory(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "pgdata" / local_server.SOCKET_FILE))
        found = local_server.discover_url({"SESSIONKEEPER_EMBEDDED_DIR": str(tmp_path)})
    assert found.endswith(f"?host={tmp_path / 'pgdata'}")


def test_a_stopped_server_is_named_with_the_url_to_set(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("18\n")
    with pytest.raises(store.ConfigurationError) as caught:
        local_server.discover_url({"SESSIONKEEPER_EMBEDDED_DIR": str(tmp_path)})
    message = str(caught.value)
    assert "is not running" in message and "sessionkeeper run" in message
    wanted = f"SESSIONKEEPER_DATABASE_URL='postgresql://postgres@/sessionkeeper?host={tmp_path}"
    assert wanted in message


def test_no_url_and_no_server_names_the_url_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONKEEPER_EMBEDDED_DIR", str(tmp_path))
    with pytest.raises(store.ConfigurationError) as caught:
        store.Store(config=store.StoreConfig())  # the conftest unsets the URL variables
    assert "no database URL" in str(caught.value)
    with pytest.raises(store.ConfigurationError) as caught:
        local_server.discover_url({"SESSIONKEEPER_EMBEDDED_DIR": str(tmp_path)})
    message = str(caught.value)
    assert "SESSIONKEEPER_DATABASE_URL='postgresql://user:password@db.example/dbname'" in message
    assert f"SESSIONKEEPER_DATABASE_URL='postgresql://postgres@/sessionkeeper?host={tmp_path}/" in (
        message
    )
