"""Fixtures and helpers shared by the store's tests (tests/integration/test_store_*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from store import Store

# A fixed clock for tests: operations take ``now`` instead of sleeping.
T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)


@pytest.fixture(name="store")
def store_fixture(database_url: str) -> Iterator[Store]:
    """A sync store on the test's database (import this name to use the ``store`` fixture)."""
    with Store(database_url, max_size=4) as opened:
        yield opened


def count(conn: psycopg.Connection[Any], table: str, where: str = "true") -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def insert_users(
    conn: psycopg.Connection[Any], channel_user_ids: list[str], channel: str = "telegram"
) -> dict[str, Any]:
    """A bare ``users`` row per channel user id (no turn taken): their user ids by id."""
    users = {}
    for channel_user_id in channel_user_ids:
        row = conn.execute(
            "INSERT INTO users (channel, channel_user_id) VALUES (%s, %s) RETURNING user_id",
            [channel, channel_user_id],
        ).fetchone()
        assert row is not None
        users[channel_user_id] = row[0]
    return users
