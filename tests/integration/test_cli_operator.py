"""The CLI as an operator meets it (issue 20): options anywhere, --version, the settings in
``run --help``, users by channel identity, confirmation of erasing verbs, progress, Ctrl-C at a
batch boundary, one-line errors, and ``export --output`` (issue 21). Run as real processes; the
terminal cases run under a pseudo-terminal (``pty``)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
from test_cli import clean_env, sessionkeeper
from test_daemon import idle_sessions

from sessionkeeper.admin import migrate
from sessionkeeper.daemon.config import load_config
from store import NotFound, Store

Conn = psycopg.Connection[tuple[object, ...]]


class Terminal:
    """``python -m sessionkeeper ARGS`` with stdin, stdout and stderr on a pseudo-terminal."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        # A terminal 120 columns wide (a new pseudo-terminal has no size).
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sessionkeeper", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm"},
        )
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        """The output so far once it holds ``text`` (a bound on the wait, not a timing)."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in {self.output!r}"
            if not self._read(0.1):
                assert text in self.output, f"ended without {text!r}: {self.output!r}"
        return self.output

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.1) or self.process.poll() is None:
            assert time.monotonic() < deadline, self.output
        os.close(self.master)
        return self.process.wait()

    def _read(self, wait: float) -> bool:
        """Read what is there; False once the other side is closed."""
        if select.select([self.master], [], [], wait)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the slave has exited
                return False
            self.output += data.decode(errors="replace")
            return bool(data)
        return self.process.poll() is None


# -- options, version, help ---------------------------------------------------------------------


def test_global_options_are_accepted_after_the_verb(database_url: str) -> None:
    env = clean_env()
    after = sessionkeeper("jobs", "list", "--log-format", "json", "--database-url", database_url)
    assert after.returncode == 0, after.stderr
    assert "session_archival" in after.stdout
    before = sessionkeeper("--database-url", database_url, "status", "--log-level", "debug")
    assert before.returncode == 0, before.stderr
    # The value after the verb is the one used: a bad URL there is what fails.
    bad = sessionkeeper("--database-url", database_url, "status", "--database-url", "x==", env=env)
    assert bad.returncode == 1 and "invalid database URL" in bad.stderr


def test_version() -> None:
    result = sessionkeeper("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sessionkeeper 0.")


def test_run_help_lists_every_setting_with_its_variable() -> None:
    result = sessionkeeper("run", "--help")
    assert result.returncode == 0, result.stderr
    config = load_config(env={})
    expected = ["SESSIONKEEPER_DATABASE_URL", "SESSIONKEEPER_METRICS_PORT = 9464"]
    expected += [f"SESSIONKEEPER_{name.upper()} =" for name in config.store.__dataclass_fields__]
    for job, settings in config.jobs.items():
        expected.append(f"SESSIONKEEPER_{job.upper()}_SCHEDULE =")
        for name in settings.settings.__dataclass_fields__:
            value = getattr(settings.settings, name)
            shown = str(value).lower() if isinstance(value, bool) else value
            expected.append(f"SESSIONKEEPER_{job.upper()}_{name.upper()} = {shown}")
    missing = [line for line in expected if line not in result.stdout]
    assert not missing


# -- users by channel identity ----------------------------------------------------------------


def test_users_are_addressed_by_channel_identity(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", 42).user_id
        other = store.get_or_create_user("whatsapp", 42).user_id
        store.redeem_link_code(other, store.create_link_code(user).code)
    who = ["--channel", "telegram", "--channel-user-id", "42"]

    exported = sessionkeeper("export", *who, env=env)
    assert exported.returncode == 0, exported.stderr
    exported_users = json.loads(exported.stdout)["tables"]["users"]
    assert [row["user_id"] for row in exported_users] == [str(user)]

    unlinked = sessionkeeper("unlink", *who, env=env)
    assert unlinked.returncode == 0, unlinked.stderr
    assert unlinked.stdout.startswith(f"user {user} left person")

    forgot = sessionkeeper("forget", "--yes", *who, env=env)
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.startswith(f"forgot user {user}:")
    with psycopg.connect(database_url) as conn:
        left = conn.execute("SELECT user_id FROM users WHERE channel_user_id = '42'").fetchall()
    assert left == [(other,)]


@pytest.mark.parametrize("verb", [["export"], ["unlink"], ["forget", "--yes"]], ids=" ".join)
def test_an_unknown_identity_is_one_line_and_changes_nothing(
    database_url: str, verb: list[str]
) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        store.get_or_create_user("telegram", 7)
    result = sessionkeeper(*verb, "--channel", "telegram", "--channel-user-id", "8", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "sessionkeeper: no user '8' on channel 'telegram'"
    assert result.stdout == ""
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
    alone = sessionkeeper(*verb, "--channel", "telegram", env=env)
    assert alone.returncode == 2 and "--channel needs --channel-user-id" in alone.stderr
    both = sessionkeeper(*verb, "--user", str(uuid.uuid4()), "--channel", "telegram", env=env)
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1


# -- confirmation ---------------------------------------------------------------------------------


def test_erasing_verbs_need_yes_without_a_terminal(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", 1).user_id
    for args in (["forget", "--user", str(user)], ["jobs", "run", "user_retention"]):
        refused = subprocess.run(
            [sys.executable, "-m", "sessionkeeper", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.splitlines()
        assert line.startswith("sessionkeeper: ") and "refused without --yes" in line
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone() == (0,)


def test_forget_asks_on_a_terminal(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", 1).user_id
    count = "SELECT count(*) FROM users"

    declined = Terminal(["forget", "--user", str(user)], env)
    assert f"erase user {user}" in declined.read_until("[y/N]")
    declined.type("n")
    assert declined.finish() == 1
    assert "nothing was changed" in declined.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute(count).fetchone() == (1,)

    agreed = Terminal(["forget", "--user", str(user)], env)
    agreed.read_until("[y/N]")
    agreed.type("y")
    assert agreed.finish() == 0, agreed.output
    assert f"forgot user {user}" in agreed.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute(count).fetchone() == (0,)


# -- progress and Ctrl-C ----------------------------------------------------------------------


def test_jobs_run_shows_a_progress_bar_on_a_terminal(database_url: str, conn: Conn) -> None:
    idle_sessions(conn, 300)
    env = clean_env(DATABASE_URL=database_url, SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE="40")
    run = Terminal(["jobs", "run", "session_archival"], env)
    assert run.finish() == 0, run.output
    # tqdm's bar: rows done of the backlog counted before the first batch, elapsed<left, rate.
    assert re.search(r"300/300 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ rows/s\]", run.output)
    assert "session_archival: success rows=300" in run.output


def test_jobs_run_logs_progress_without_a_terminal(database_url: str, conn: Conn) -> None:
    idle_sessions(conn, 100)
    env = clean_env(DATABASE_URL=database_url, SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE="40")
    result = sessionkeeper("--log-format", "json", "jobs", "run", "session_archival", env=env)
    assert result.returncode == 0, result.stderr
    logged = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    progress = [m for m in logged if m.startswith("session_archival: ")]
    # The first batch is logged at once; the next ones at most every few seconds.
    assert progress and progress[0].startswith("session_archival: 40/100 rows, ")
    assert "\r" not in result.stderr


def test_migrate_shows_the_progress_of_a_backfill(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, "0013")  # before revision 0014 fills session_messages.user_id
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (channel, channel_user_id) VALUES ('telegram', '1')")
        conn.execute("INSERT INTO sessions (user_id, next_seq) SELECT user_id, 7000 FROM users")
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content)"
            " SELECT session_id, g, 'user', 'x' FROM sessions, generate_series(0, 6999) g"
        )
    env = clean_env(DATABASE_URL=url)
    result = sessionkeeper("--log-format", "json", "migrate", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    logged = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    # Batches of 5000: the first is logged at once.
    assert "session_messages.user_id: 5000 rows, " in "\n".join(logged)
    assert "migrated from 0013 to" in result.stdout


def test_ctrl_c_stops_jobs_run_at_a_batch_boundary(database_url: str, conn: Conn) -> None:
    idle_sessions(conn, 500)
    env = clean_env(
        DATABASE_URL=database_url,
        SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE="50",
        # After its first batch the run pauses for an hour: Ctrl-C must end the pause at once.
        SESSIONKEEPER_SESSION_ARCHIVAL_PAUSE_SECONDS="3600",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "sessionkeeper", "jobs", "run", "session_archival"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60  # a bound on the wait, not a timing
        while conn.execute("SELECT count(*) FROM archived_sessions").fetchone() != (50,):
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 130, stderr
    assert stdout.startswith("session_archival: stopped rows=50 ")
    assert "(stopped: 50 done, 450 left for the next run)" in stdout
    assert "Traceback" not in stderr
    ledger = conn.execute("SELECT outcome, rows, details ->> 'archived' FROM job_runs")
    assert ledger.fetchall() == [("stopped", 50, "50")]
    assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (450,)


# -- one-line errors ----------------------------------------------------------------------------


def test_a_bad_connect_timeout_is_one_line(database_url: str) -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/db?connect_timeout=abc"
    for verb in (["status"], ["export", "--user", str(uuid.uuid4())]):
        result = sessionkeeper("--database-url", url, *verb, timeout=30)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert "bad value for connect_timeout: 'abc'" in line and "hunter2" not in line


def test_plpgsql_context_and_sql_stay_out_of_errors(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    missing = uuid.uuid4()
    result = sessionkeeper("unlink", "--user", str(missing), env=env)
    assert result.returncode == 1
    expected = f"sessionkeeper: user {missing} does not exist (SQLSTATE P0002)"
    assert result.stderr.splitlines() == [expected]
    with Store(database_url) as store, pytest.raises(NotFound) as caught:
        # A foreign-key violation on a partition of usage_stats: no partition name, no SQL.
        store.track_usage(missing, "telegram", input_tokens=1)
    assert str(caught.value) == f"user {missing} does not exist (SQLSTATE 23503)"


def test_a_closed_pipe_is_one_line(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", 1).user_id
    reader, writer = os.pipe()
    os.close(reader)  # `| head` that has already gone
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sessionkeeper", "export", "--user", str(user)],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1:] == [
        "sessionkeeper: output closed before the end (broken pipe)"
    ]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


# -- export --output ----------------------------------------------------------------------------


def test_export_output_is_private_and_never_overwritten(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", 1).user_id
    target = tmp_path / "user.json"
    permissive = subprocess.run(
        [
            *["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "sessionkeeper"],
            *["export", "--user", str(user), "--output", str(target)],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert permissive.returncode == 0, permissive.stderr
    assert permissive.stdout == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["subject"] == {"user_id": str(user)}

    target.write_text("keep me")
    refused = sessionkeeper("export", "--user", str(user), "--output", str(target), env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"sessionkeeper: {target} exists; refusing to overwrite it without --force"
    )
    assert target.read_text() == "keep me"

    target.chmod(0o644)
    forced = sessionkeeper(
        "export", "--user", str(user), "--output", str(target), "--force", env=env
    )
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert str(user) in target.read_text()


def test_a_failed_export_leaves_no_file(database_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=database_url)
    target = tmp_path / "user.json"
    missing = sessionkeeper("export", "--user", str(uuid.uuid4()), "--output", str(target), env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert list(tmp_path.iterdir()) == []
