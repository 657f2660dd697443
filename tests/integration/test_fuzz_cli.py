"""The CLI and the daemon's settings with generated bad input, run as processes.

Every verb gets a handful of generated argument lists (bad values for its options, stray
words, odd Unicode); each must end in at most one line on stderr starting with
``sessionkeeper`` and exit status 1 or 2 (0 or 3 when the arguments happen to be valid),
never a traceback. Bad ``SESSIONKEEPER_*`` values must stop ``sessionkeeper run`` at start-up
with one line and status 1. The database is the test's (no embedded server is started).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_strategies import examples
from hypothesis import given
from hypothesis import strategies as st

# Arguments reach the process as bytes: no NUL, and only the surrogates Python decodes
# undecodable bytes into (surrogateescape), so that the child sees exactly these strings.
arg_characters = st.characters(
    exclude_characters="\x00", exclude_categories=["Cs"]
) | st.sampled_from(["\udcff", "\udc80"])
words = st.one_of(
    st.text(arg_characters, max_size=12),
    st.sampled_from(
        [
            "",
            "-",
            "--",
            "-1",
            "0",
            "99999999999999999999999",
            "1e400",
            "nan",
            "inf",
            "00000000-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-00000000000g",
            "é" * 300,
            "x" * 5000,
            "\u202e",
            "--bogus",
            "--user",
            "--person",
            "--dry-run",
            "--batch-size",
            "--max-batches",
            "--legacy-time-zone",
            "Mars/Olympus",
            "rate_limit_cleanup",
        ]
    ),
).filter(lambda w: not w.startswith(("-h", "--h")))  # help is no error (and exits 0)
GLOBAL: st.SearchStrategy[list[str]] = st.one_of(
    st.just([]),
    st.tuples(
        st.sampled_from(["--log-level", "--log-format", "--config", "--database-url"]), words
    ).map(list),
)
VERBS = {
    "migrate": ["migrate"],
    "run": ["run"],
    "status": ["status"],
    "jobs list": ["jobs", "list"],
    "jobs run": ["jobs", "run"],
    "sessions restore": ["sessions", "restore"],
    "forget": ["forget"],
}


def sessionkeeper(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    environ.pop("DATABASE_URL", None)
    environ.update(SESSIONKEEPER_DATABASE_URL=database_url, **env)
    return subprocess.run(
        [sys.executable, "-m", "sessionkeeper", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env=environ,
        timeout=120,
        check=False,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *statuses: int) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in statuses, (result.returncode, result.stderr)
    if result.returncode in (1, 2):
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sessionkeeper"), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("verb", VERBS)
@examples(0.06)
@given(options=GLOBAL, extra=st.lists(words, max_size=3))
def test_bad_arguments_get_one_line_and_status_1_or_2(
    database_url: str, verb: str, options: list[str], extra: list[str]
) -> None:
    if verb == "run":  # a valid `run` would start the daemon: always add a stray word
        extra = ["stray", *extra]
    result = sessionkeeper(*options, *VERBS[verb], *extra, database_url=database_url)
    assert_one_line_refusal(result, 1, 2) if verb == "run" else assert_one_line_refusal(
        result, 0, 1, 2, 3
    )


def test_an_argument_with_a_line_break_is_quoted_on_one_line(database_url: str) -> None:
    # Was: argparse's message quoted it verbatim, over two lines.
    result = sessionkeeper("forget", "--user", "a\nb", database_url=database_url)
    assert_one_line_refusal(result, 2)
    assert "a\\nb" in result.stderr


def test_an_unknown_log_level_is_a_usage_error(database_url: str) -> None:
    # Was: a ValueError traceback from logging.
    result = sessionkeeper("--log-level", "LOUD", "jobs", "list", database_url=database_url)
    assert_one_line_refusal(result, 2)
    assert "unknown logging level 'LOUD'" in result.stderr


def test_a_binary_configuration_file_is_refused_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    # Was: a UnicodeDecodeError traceback while reading the file.
    binary = tmp_path / "settings.toml"
    binary.write_bytes(b"\xd0\xff\x00 not text")
    result = sessionkeeper("--config", str(binary), "status", database_url=database_url)
    assert_one_line_refusal(result, 1)
    assert "cannot read configuration file" in result.stderr


def test_a_malformed_database_url_is_refused_in_one_line(database_url: str) -> None:
    # Was: libpq's message ended in a newline, so the error took two lines.
    result = sessionkeeper("--database-url", "garbage==", "status", database_url=database_url)
    assert_one_line_refusal(result, 1)
    assert "invalid database URL" in result.stderr


NUMERIC_SETTINGS = [
    "SESSIONKEEPER_MAX_SIZE",
    "SESSIONKEEPER_HISTORY_PAIRS",
    "SESSIONKEEPER_IDLE_TIMEOUT",
    "SESSIONKEEPER_LINK_CODE_TTL",
    "SESSIONKEEPER_RATE_PER_MINUTE",
    "SESSIONKEEPER_STATEMENT_TIMEOUT_MS",
    "SESSIONKEEPER_METRICS_PORT",
    "SESSIONKEEPER_WORKERS",
    "SESSIONKEEPER_LOCK_TIMEOUT_SECONDS",
    "SESSIONKEEPER_SESSION_ARCHIVAL_IDLE_SECONDS",
    "SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE",
    "SESSIONKEEPER_LINK_CODE_EXPIRY_PAUSE_SECONDS",
]
# Bad for every setting above: not a number, not finite, negative, or beyond every bound.
BAD_NUMBERS = ["x", "-5", "1e400", "nan", "inf", "99999999999999999999", "10**9", "½"]


@pytest.mark.slow
@examples(0.08)
@given(name=st.sampled_from(NUMERIC_SETTINGS), value=st.sampled_from(BAD_NUMBERS))
def test_the_daemon_refuses_bad_settings_at_start_up(
    database_url: str, name: str, value: str
) -> None:
    result = sessionkeeper("run", database_url=database_url, **{name: value})
    assert_one_line_refusal(result, 1)
    assert name in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSIONKEEPER_IDLE_TIMEOUT", "36526d"),  # now - idle left PostgreSQL's range
        ("SESSIONKEEPER_RATE_PER_MINUTE", "2147483648"),  # sent as integer[]: out of range
        ("SESSIONKEEPER_STATEMENT_TIMEOUT_MS", "2147483648"),  # no connection would open
        ("SESSIONKEEPER_METRICS_PORT", "65536"),
        ("SESSIONKEEPER_SESSION_ARCHIVAL_IDLE_SECONDS", "99999999999"),  # interval out of range
    ],
)
def test_settings_that_used_to_fail_later_are_refused_at_start_up(
    database_url: str, name: str, value: str
) -> None:
    # Was: accepted, then every turn, connection or run of a job failed.
    result = sessionkeeper("run", database_url=database_url, **{name: value})
    assert_one_line_refusal(result, 1)
    assert f"invalid setting {name}: '{value}'" in result.stderr
