"""``sessionkeeper migrate`` makes the partitions ahead (issue 24): at the end of every migrate,
also at head, with partition_maintenance itself; a role that may not is told so, and nothing
fails; so does ``run`` before it starts the jobs. Run as a process, on a database whose
partitions end tomorrow."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import TEST_LOGINS, as_login
from daemon_support import daemon_env
from test_cli import clean_env, sessionkeeper, sessionkeeper_until

from sessionkeeper.admin import roles
from sessionkeeper.jobs import ledger, partitions

Conn = psycopg.Connection[tuple[Any, ...]]
DAY = timedelta(days=1)


def cut_after_tomorrow(conn: Conn) -> None:
    """Drop every partition starting after tomorrow (UTC days): the partitions end tomorrow, as
    with a daemon down for six days."""
    end = partitions.slot_start(datetime.now(UTC), DAY) + 2 * DAY
    for partition in partitions.list_partitions(conn):
        if partition.lower is not None and partition.lower >= end:
            conn.execute(f"ALTER TABLE {partition.parent} DETACH PARTITION {partition.name}")
            conn.execute(f"DROP TABLE {partition.name}")


def missing(conn: Conn, at: datetime) -> dict[str, int]:
    """Per table, the partitions missing from the window partition_maintenance keeps at ``at``
    (the day holding it and 7 more, its defaults)."""
    existing = partitions.list_partitions(conn)
    return {
        table: len(partitions.missing_ranges(existing, table, at, DAY, 7))
        for table in partitions.KEYS
    }


def test_migrate_makes_the_partitions_ahead_and_again_changes_nothing(
    conn: Conn, database_url: str
) -> None:
    cut_after_tomorrow(conn)
    env = clean_env(DATABASE_URL=database_url)
    before = datetime.now(UTC)
    assert missing(conn, before) == {"rate_limits": 6, "usage_stats": 6}

    first = sessionkeeper("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "already at" in first.stdout
    # The job ran at `before` or later: the window of `before` is covered whole.
    assert missing(conn, before) == {"rate_limits": 0, "usage_stats": 0}
    assert re.search(
        r"partitions ahead \(partition_maintenance, ahead=7\): 1[24] made, 0 deferred;"
        r" now ahead: rate_limits 7, usage_stats 7",
        first.stdout,
    ), first.stdout
    run = ledger.last_runs(conn, ["partition_maintenance"])["partition_maintenance"]
    assert run.outcome == "success" and run.rows == 0
    made = partitions.list_partitions(conn)

    second = sessionkeeper("migrate", env=env)
    assert second.returncode == 0, second.stderr
    if partitions.slot_start(datetime.now(UTC), DAY) == partitions.slot_start(before, DAY):
        assert "ahead=7): 0 made, 0 deferred" in second.stdout, second.stdout
        assert partitions.list_partitions(conn) == made


def test_a_role_that_may_not_make_partitions_is_told_and_the_migration_stands(
    conn: Conn, database_url: str
) -> None:
    # Tables handed to a role the migrate login is no member of: it still migrates (it owns
    # the functions and the other tables), but PostgreSQL lets only the tables' owner make
    # their partitions.
    if not roles.role_exists(conn, "sk_test_elsewhere"):
        conn.execute("CREATE ROLE sk_test_elsewhere NOLOGIN")
    for table in partitions.KEYS:
        conn.execute(f"ALTER TABLE {table} OWNER TO sk_test_elsewhere")
    cut_after_tomorrow(conn)
    left = partitions.list_partitions(conn)
    env = clean_env(DATABASE_URL=as_login(database_url, TEST_LOGINS["owner"]))
    result = sessionkeeper("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "already at" in result.stdout
    assert (
        "partitions ahead not made: role sessionkeeper_owner may not create partitions of"
        " rate_limits and usage_stats"
    ) in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    assert partitions.list_partitions(conn) == left


def test_the_job_s_settings_are_followed(conn: Conn, database_url: str) -> None:
    cut_after_tomorrow(conn)
    left = partitions.list_partitions(conn)
    disabled = clean_env(
        DATABASE_URL=database_url, SESSIONKEEPER_PARTITION_MAINTENANCE_ENABLED="false"
    )
    result = sessionkeeper("migrate", env=disabled)
    assert result.returncode == 0, result.stderr
    assert "partitions ahead: none made (partition_maintenance is disabled)" in result.stdout
    assert partitions.list_partitions(conn) == left
    fewer = clean_env(DATABASE_URL=database_url, SESSIONKEEPER_PARTITION_MAINTENANCE_AHEAD="3")
    result = sessionkeeper("migrate", env=fewer)
    assert result.returncode == 0, result.stderr
    assert "(partition_maintenance, ahead=3): " in result.stdout, result.stdout
    assert "now ahead: rate_limits 3, usage_stats 3" in result.stdout, result.stdout


@pytest.mark.parametrize("kind", ["owner", "daemon"])
def test_the_owner_and_the_daemon_may(conn: Conn, database_url: str, kind: str) -> None:
    # The migrate login takes the owner role as the revisions do; the daemon's login may take it
    # (a NOINHERIT member): both make the partitions, owned by the owner role.
    cut_after_tomorrow(conn)
    env = clean_env(DATABASE_URL=as_login(database_url, TEST_LOGINS[kind]))
    result = sessionkeeper("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert " made, 0 deferred" in result.stdout, result.stdout
    owners = conn.execute(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent IN ('rate_limits'::regclass, 'usage_stats'::regclass)"
    ).fetchall()
    assert owners == [("sessionkeeper_owner",)]


@pytest.mark.slow
def test_run_makes_the_partitions_ahead_before_the_job_s_first_slot(
    conn: Conn, database_url: str
) -> None:
    # A daemon started after days down, its partition_maintenance slot a year away: the bots'
    # writes of now would fail until that slot but for the start-up's migrate.
    cut_after_tomorrow(conn)
    before = datetime.now(UTC)
    env = daemon_env(database_url, SESSIONKEEPER_PARTITION_MAINTENANCE_SCHEDULE="0 0 1 1 *")
    with sessionkeeper_until("run", env=env, until="sessionkeeper running") as (daemon, seen):
        assert any("partitions ahead (partition_maintenance" in line for line in seen), seen
        assert missing(conn, before) == {"rate_limits": 0, "usage_stats": 0}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
