"""The sessionkeeper command line, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from store import migrate
from store.embedded import EmbeddedPostgres

SUBCOMMANDS = [[], ["migrate"], ["run"], ["status"], ["jobs"], ["jobs", "list"], ["jobs", "run"]]


def sessionkeeper(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


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
    [["frobnicate"], ["jobs"], ["jobs", "run"], ["migrate", "--bogus"], ["jobs", "run", "nope"]],
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
    env = clean_env(SESSIONKEEPER_EMBEDDED_DIR=str(base))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stderr is not None
        seen = []
        for line in daemon.stderr:
            seen.append(line)
            if "sessionkeeper running" in line:
                break
        assert any("sessionkeeper running" in line for line in seen), "".join(seen)
        assert server.is_running()
        with psycopg.connect(server.url("postgres")) as conn:
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
        if daemon.poll() is None:
            daemon.kill()
        server.stop(force=True)
