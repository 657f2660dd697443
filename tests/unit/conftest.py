"""Unit tests of the store's core: no PostgreSQL. Plans run on ``in_memory.InMemoryDatabase``.

Nothing here starts a server (the integration conftest is not loaded for this folder), and a
unit test that tries to connect anyway fails at once instead of waiting for a timeout.
"""

from __future__ import annotations

from typing import Any, NoReturn

import psycopg
import pytest

from store.config import StoreConfig


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError("a unit test tried to connect to a database")

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(refuse))
    for name in ("SESSIONKEEPER_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config() -> StoreConfig:
    """The defaults, whatever the environment says."""
    return StoreConfig()
