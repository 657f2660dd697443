"""user_retention: users inactive for inactive_seconds are forgotten as forget_user does."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time

from sessionkeeper.daemon.config import load_config
from sessionkeeper.jobs import JOB_NAMES, user_retention
from sessionkeeper.jobs.runner import run_job
from store import ANONYMOUS_USER_ID

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
SETTINGS = user_retention.Settings(batch_size=2)  # several batches even for a few users


def user(conn: Conn, name: str, updated: datetime) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO users (channel, channel_user_id, created_at, updated_at)"
        " VALUES ('telegram', %s, %s, %s) RETURNING user_id",
        (name, updated, updated),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def session(conn: Conn, owner: uuid.UUID, last_active: datetime, *, archived: bool = False) -> None:
    table = "archived_sessions" if archived else "sessions"
    sid = conn.execute(
        f"INSERT INTO {table} (session_id, user_id, created_at, last_active, next_seq)"
        " VALUES (gen_random_uuid(), %s, %s, %s, 1) RETURNING session_id",
        (owner, last_active, last_active),
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        f"INSERT INTO {'archived_session_messages' if archived else 'session_messages'}"
        " (session_id, seq, role, content, created_at) VALUES (%s, 0, 'user', 'hi', %s)",
        (sid, last_active),
    )


def names(conn: Conn) -> set[str]:
    return {row[0] for row in conn.execute("SELECT channel_user_id FROM users")}


@pytest.fixture
def world(conn: Conn) -> dict[str, uuid.UUID]:
    """Two years of history: who is inactive for a year, and who is not."""
    long_ago = NOW - 2 * YEAR
    people = {
        "silent": user(conn, "silent", long_ago),  # nothing since
        "old_chat": user(conn, "old_chat", long_ago),
        "old_archive": user(conn, "old_archive", long_ago),
        "chatty": user(conn, "chatty", long_ago),  # a session active last month
        "archived": user(conn, "archived", long_ago),  # an archived session from last month
        "renamed": user(conn, "renamed", NOW - timedelta(days=30)),  # its row changed lately
    }
    session(conn, people["old_chat"], NOW - 2 * YEAR)
    session(conn, people["old_archive"], NOW - YEAR - timedelta(days=1), archived=True)
    session(conn, people["chatty"], NOW - 2 * YEAR)
    session(conn, people["chatty"], NOW - timedelta(days=30))
    session(conn, people["archived"], NOW - timedelta(days=60), archived=True)
    conn.execute(
        "INSERT INTO usage_stats (user_id, channel, input_tokens, created_at)"
        " VALUES (%s, 'telegram', 5, %s)",
        (people["old_chat"], NOW - 2 * YEAR),
    )
    return people


def test_inactive_users_are_forgotten_and_active_ones_kept(conn: Conn, world: Any) -> None:
    result = user_retention.run(conn, SETTINGS, NOW)
    assert names(conn) == {"chatty", "archived", "renamed"}
    assert result.rows == 3
    assert result.details == {
        "scanned": 6,
        "forgotten": 3,
        "blocked": 0,
        "busy": 0,
        "persons": 0,
    }
    # As forget_user: nothing left about them, usage kept as anonymous totals.
    for table in ("sessions", "archived_sessions", "usage_stats"):
        owners = {row[0] for row in conn.execute(f"SELECT user_id FROM {table}")}
        assert owners <= {world["chatty"], world["archived"]}, table
    anonymous = conn.execute(
        "SELECT input_tokens FROM usage_daily WHERE user_id = %s", (ANONYMOUS_USER_ID,)
    ).fetchall()
    assert anonymous == [(5,)]
    assert user_retention.run(conn, SETTINGS, NOW).rows == 0


def test_a_dry_run_counts_and_changes_nothing(conn: Conn, world: Any) -> None:
    before = conn.execute("SELECT count(*) FROM users").fetchone()
    result = user_retention.run(conn, user_retention.Settings(batch_size=4, dry_run=True), NOW)
    assert (result.rows, result.details) == (0, {"dry_run": True, "scanned": 6, "would_forget": 3})
    assert conn.execute("SELECT count(*) FROM users").fetchone() == before


def test_the_retention_period_is_a_setting(conn: Conn, world: Any) -> None:
    two_months = user_retention.Settings(inactive_seconds=45 * 86400)
    assert user_retention.run(conn, two_months, NOW).rows == 4  # "archived" too
    assert names(conn) == {"chatty", "renamed"}


def test_a_user_another_table_still_references_is_left_and_counted(conn: Conn, world: Any) -> None:
    conn.execute("CREATE TABLE memories (user_id uuid REFERENCES users (user_id))")
    conn.execute("INSERT INTO memories VALUES (%s)", (world["silent"],))
    result = user_retention.run(conn, SETTINGS, NOW)
    assert (result.details["forgotten"], result.details["blocked"]) == (2, 1)
    assert "silent" in names(conn)


def test_a_linked_user_leaves_its_person_to_the_others(conn: Conn, world: Any) -> None:
    person = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING person_id").fetchone()
    conn.execute(
        "UPDATE users SET person_id = %s WHERE user_id IN (%s, %s)",
        (person[0], world["silent"], world["chatty"]),  # type: ignore[index]
    )
    assert user_retention.run(conn, SETTINGS, NOW).details["persons"] == 0
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (1,)


def test_a_user_whose_person_is_being_linked_is_left_for_the_next_run(
    conn: Conn, world: Any, database_url: str
) -> None:
    # A redemption or unlink holds the person's lock and may next wait for the user's row,
    # which the batch holds: the erasure gives up on that user instead of waiting (a deadlock).
    row = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING person_id").fetchone()
    assert row is not None
    person = row[0]
    conn.execute("UPDATE users SET person_id = %s WHERE user_id = %s", (person, world["silent"]))
    conn.execute("SET statement_timeout = '10s'")  # were the job to wait, it fails instead
    with psycopg.connect(database_url) as online:  # mid-redemption: the person lock is held
        online.execute("SELECT pg_advisory_xact_lock(1936420965, hashtext(%s::text))", (person,))
        result = user_retention.run(conn, SETTINGS, NOW)
        online.rollback()
    assert (result.details["forgotten"], result.details["busy"]) == (2, 1)
    assert "silent" in names(conn)
    assert user_retention.run(conn, SETTINGS, NOW).details["forgotten"] == 1
    assert "silent" not in names(conn)


def connector(url: str) -> Any:
    def connect() -> AbstractContextManager[Conn]:
        return psycopg.connect(url, autocommit=True)

    return connect


def test_off_by_default_and_run_like_every_job(database_url: str, conn: Conn, world: Any) -> None:
    assert "user_retention" in JOB_NAMES
    assert load_config(env={}).jobs["user_retention"].enabled is False
    enabled = load_config(
        env={
            "SESSIONKEEPER_USER_RETENTION_ENABLED": "true",
            "SESSIONKEEPER_USER_RETENTION_DRY_RUN": "yes",
        }
    ).jobs["user_retention"]
    assert enabled.enabled and enabled.settings.dry_run
    assert enabled.settings.inactive_seconds == 365 * 86400
    with freeze_time(NOW):
        report = run_job(
            connector(database_url), "user_retention", enabled.settings, replica_id="r"
        )
    assert (report.outcome, report.rows, report.details["would_forget"]) == ("success", 0, 3)
    ledger = conn.execute("SELECT outcome, details ->> 'dry_run' FROM job_runs").fetchall()
    assert ledger == [("success", "true")]
