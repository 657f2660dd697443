"""The sessionkeeper command line, run as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.jobs import JOB_NAMES, locking
from store import Store

SUBCOMMANDS = [
    [],
    ["migrate"],
    ["run"],
    ["status"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "run"],
    ["sessions"],
    ["sessions", "restore"],
    ["export"],
    ["unlink"],
]


def sessionkeeper(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionkeeper", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def sessionkeeper_until(
    *args: str, env: dict[str, str], until: str, stream: str = "stderr"
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m sessionkeeper ARGS`` as a process for the block, and the lines of its
    ``stream`` ("stderr" or "stdout") up to the first holding ``until``; killed at the end if
    it still runs."""
    child = subprocess.Popen(
        [sys.executable, "-m", "sessionkeeper", *args],
        stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        lines = child.stdout if stream == "stdout" else child.stderr
        assert lines is not None
        seen: list[str] = []
        for line in lines:
            seen.append(line)
            if until in line:
                break
        assert any(until in line for line in seen), "".join(seen)
        yield child, seen
    finally:
        if child.poll() is None:
            child.kill()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "SESSIONKEEPER_DATABASE_URL", "SESSIONKEEPER_EMBEDDED_DIR")
    }
    env.update(extra)
    return env


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_command_has_help(words: list[str]) -> None:
    result = sessionkeeper(*words, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: sessionkeeper" in result.stdout


@pytest.mark.parametrize(
    "words",
    [
        ["frobnicate"],
        ["jobs"],
        ["jobs", "run"],
        ["migrate", "--bogus"],
        ["jobs", "run", "nope"],
        ["sessions", "restore", "not-a-uuid"],
        ["--log-format", "xml", "status"],
    ],
    ids=" ".join,
)
def test_bad_usage_exits_2_with_one_line(words: list[str]) -> None:
    result = sessionkeeper(*words)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionkeeper"), result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    env = clean_env(DATABASE_URL=empty_database_url)
    first = sessionkeeper("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "migrated from empty to" in first.stdout
    second = sessionkeeper("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "already at" in second.stdout
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()


def test_status_reports_an_unmigrated_database(empty_database_url: str) -> None:
    result = sessionkeeper("status", env=clean_env(DATABASE_URL=empty_database_url))
    assert result.returncode == 1
    assert "OUTDATED" in result.stdout
    # Reading the revision logs none of Alembic's preamble; migrate still logs its upgrades.
    assert "Context impl" not in result.stderr and "Will assume" not in result.stderr
    migrated = sessionkeeper("migrate", env=clean_env(DATABASE_URL=empty_database_url))
    assert "Running upgrade  -> 0001" in migrated.stderr
    assert "Context impl" not in migrated.stderr


def test_unreachable_database_is_one_line_without_password() -> None:
    url = "postgresql://bot:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"
    result = sessionkeeper("migrate", env=clean_env(DATABASE_URL=url))
    assert result.returncode == 1
    assert "database unavailable" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_run_without_url_uses_embedded_postgres_and_stops_it() -> None:
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-cli-"))
    server = EmbeddedPostgres(base)
    env = clean_env(SESSIONKEEPER_EMBEDDED_DIR=str(base), SESSIONKEEPER_METRICS_PORT="0")
    try:
        with sessionkeeper_until("run", env=env, until="sessionkeeper running") as (daemon, _):
            assert server.is_running()
            with psycopg.connect(server.url("sessionkeeper")) as conn:
                version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            assert version == (migrate.head_revision(),)

            # A second command finds the running server and leaves it running.
            status = sessionkeeper("status", env=env)
            assert status.returncode == 0, status.stderr
            assert server.is_running()

            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
            assert not server.is_running()
    finally:
        server.stop(force=True)


def test_bad_configuration_is_one_line_naming_the_setting(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url, SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE="lots")
    result = sessionkeeper("run", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE" in lines[0], lines


def test_a_busy_metrics_port_is_one_line_naming_the_setting(database_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        env = clean_env(DATABASE_URL=database_url, SESSIONKEEPER_METRICS_PORT=port)
        result = sessionkeeper("run", env=env)
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("sessionkeeper:")]
    assert "SESSIONKEEPER_METRICS_PORT" in line and port in line
    assert "Traceback" not in result.stderr


def test_jobs_run_reports_its_outcome_in_the_exit_code(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """
            WITH u AS (INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '9')
                       RETURNING user_id)
            INSERT INTO usage_stats (user_id, channel, input_tokens) SELECT user_id, 'telegram', 5
            FROM u
            """
        )
        ran = sessionkeeper("--log-format", "json", "jobs", "run", "usage_rollup", env=env)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith("usage_rollup: success rows=1 ")
        (line,) = [json.loads(x) for x in ran.stderr.splitlines() if '"outcome"' in x]
        assert (line["job"], line["outcome"], line["rows"]) == ("usage_rollup", "success", 1)
        assert line["duration_seconds"] >= 0

        # Another process holds the job's lock: the run is skipped (exit 3).
        with locking.job_lock(conn, "usage_rollup") as taken:
            assert taken
            skipped = sessionkeeper("jobs", "run", "usage_rollup", env=env)
        assert skipped.returncode == 3, skipped.stderr
        assert "skipped" in skipped.stdout

        conn.execute("ALTER TABLE usage_daily RENAME TO usage_daily_gone")
        conn.execute("UPDATE usage_rollup_state SET watermark = 0")
        failed = sessionkeeper("jobs", "run", "usage_rollup", env=env)
        assert failed.returncode == 1
        assert "failure" in failed.stdout and "UndefinedTable" in failed.stdout
        assert "Traceback" not in failed.stderr
        conn.execute("ALTER TABLE usage_daily_gone RENAME TO usage_daily")

    listed = sessionkeeper("jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == set(JOB_NAMES)
    assert "every 300s" in rows["usage_rollup"] and " failure " in rows["usage_rollup"]
    assert "never run" in rows["session_archival"]

    status = sessionkeeper("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "usage_rollup: failure" in status.stdout
    assert "proactive_reload: never run" in status.stdout


def test_a_signal_ends_a_jobs_run_pausing_between_batches(database_url: str) -> None:
    env = clean_env(
        DATABASE_URL=database_url,
        SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE="1",
        SESSIONKEEPER_USAGE_ROLLUP_PAUSE_SECONDS="3600",
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '9')
            """
        )
        for _ in range(3):  # three transactions: a transaction's rows are counted together
            conn.execute(
                "INSERT INTO usage_stats (user_id, channel, input_tokens)"
                " SELECT user_id, 'telegram', 5 FROM users"
            )
        run = subprocess.Popen(
            [sys.executable, "-m", "sessionkeeper", "jobs", "run", "usage_rollup"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            # The first batch rolled up one row; the run then pauses for an hour.
            rolled = "SELECT count(*) FROM usage_daily"
            deadline = time.monotonic() + 60  # a bound on the wait, not a timing
            while conn.execute(rolled).fetchone() != (1,):
                assert run.poll() is None and time.monotonic() < deadline, run.stderr
                time.sleep(0.05)
            run.send_signal(signal.SIGTERM)
            stdout, stderr = run.communicate(timeout=60)
        finally:
            run.kill()
            run.wait()
        assert run.returncode == 128 + signal.SIGTERM, stderr
        assert stdout.startswith("usage_rollup: stopped rows=1 ")
        stopped = conn.execute("SELECT outcome, rows, details ->> 'stopped' FROM job_runs")
        assert stopped.fetchall() == [("stopped", 1, "true")]


def test_jobs_list_reads_the_configuration_file(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "sessionkeeper.toml"
    config.write_text('[jobs.session_archival]\nschedule = "30 3 * * *"\nenabled = false\n')
    result = sessionkeeper(
        "--config", str(config), "jobs", "list", env=clean_env(DATABASE_URL=database_url)
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("session_archival")]
    assert "cron 30 3 * * * UTC" in row and "disabled" in row


def test_sessions_restore(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            """
            WITH u AS (INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '7')
                       RETURNING user_id),
            s AS (INSERT INTO archived_sessions (session_id, user_id, created_at, last_active,
                                                 next_seq)
                  SELECT gen_random_uuid(), user_id, now(), now() - interval '90 days', 2 FROM u
                  RETURNING session_id)
            INSERT INTO archived_session_messages (session_id, seq, role, content, created_at)
            SELECT session_id, seq, 'user', 'm' || seq, now() FROM s, generate_series(0, 1) seq
            RETURNING session_id
            """
        ).fetchone()
        assert row is not None
        restored = sessionkeeper("sessions", "restore", str(row[0]), env=env)
        assert restored.returncode == 0, restored.stderr
        assert "restored with 2 messages" in restored.stdout
        assert conn.execute("SELECT count(*) FROM session_messages").fetchone() == (2,)
        kept = conn.execute("SELECT last_active < now() - interval '89 days' FROM sessions")
        assert kept.fetchone() == (True,)

    again = sessionkeeper("sessions", "restore", str(row[0]), env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == f"sessionkeeper: no archived session {row[0]}"


def test_unwritable_embedded_dir_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = clean_env(SESSIONKEEPER_EMBEDDED_DIR=str(blocker / "data"))
    result = sessionkeeper("migrate", env=env)
    assert result.returncode == 1
    assert "SESSIONKEEPER_EMBEDDED_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unlink(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        a = store.get_or_create_user("telegram", "a").user_id
        b = store.get_or_create_user("whatsapp", "b").user_id
        person = store.redeem_link_code(b, store.create_link_code(a).code).person_id
    first = sessionkeeper("unlink", "--user", str(a), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"user {a} left person {person}"
    second = sessionkeeper("unlink", "--user", str(b), env=env)
    assert "(its last user: the person was deleted)" in second.stdout
    again = sessionkeeper("unlink", "--user", str(b), env=env)
    assert again.stdout.strip() == f"user {b} was not linked to a person"
    unknown = sessionkeeper("unlink", "--user", str(uuid.uuid4()), env=env)
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    for bad in (["--user", "b"], []):
        refused = sessionkeeper("unlink", *bad, env=env)
        assert refused.returncode == 2, refused.stderr
