"""New job settings are refused at start-up with one line naming the setting and the form:
through the one settings loader, as `sessionkeeper run` reads them (no database)."""

from __future__ import annotations

import pytest

from sessionkeeper.daemon.config import load_config
from sessionkeeper.jobs import session_archival
from store.errors import ConfigurationError


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        # A partition interval of zero, or one not aligned to UTC days.
        ("SESSIONKEEPER_PARTITION_MAINTENANCE_RATE_LIMITS_INTERVAL_SECONDS", "0", "hours"),
        ("SESSIONKEEPER_PARTITION_MAINTENANCE_USAGE_STATS_INTERVAL_SECONDS", "5000", "hours"),
        # Fewer than one partition ahead.
        ("SESSIONKEEPER_PARTITION_MAINTENANCE_AHEAD", "0", "at least 1"),
        # A raw-usage retention shorter than the day it is rolled up into.
        ("SESSIONKEEPER_USAGE_ROLLUP_PRUNE_AFTER_SECONDS", "3600", "at least 86400"),
        ("SESSIONKEEPER_RATE_LIMIT_CLEANUP_LOCK_TIMEOUT_MS", "0", "at least 1"),
        ("SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SECONDS", "0", "above 0"),
    ],
)
def test_bad_values_are_refused_in_one_line(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_config({variable: value})
    message = str(refused.value)
    assert "\n" not in message
    assert variable in message and expected in message


@pytest.mark.parametrize(
    "environ",
    [
        {"SESSIONKEEPER_PARTITION_MAINTENANCE_RATE_LIMITS_INTERVAL_SECONDS": "3600"},
        {"SESSIONKEEPER_PARTITION_MAINTENANCE_USAGE_STATS_INTERVAL_SECONDS": str(7 * 86400)},
        {"SESSIONKEEPER_USAGE_ROLLUP_PRUNE_AFTER_SECONDS": "0"},
        {"SESSIONKEEPER_USAGE_ROLLUP_PRUNE_AFTER_SECONDS": "86400"},
    ],
)
def test_good_values_are_taken(environ: dict[str, str]) -> None:
    load_config(environ)


# -- session_archival's pacing (jobs/session_archival.py) ----------------------------------------


@pytest.mark.parametrize(
    ("size", "handled", "elapsed", "expected"),
    [
        (500, 500, 1.0, 250),  # 500 a second, half a second wanted
        (100, 100, 0.01, 200),  # fast: at most doubles
        (500, 500, 0.0001, 500),  # never beyond batch_size
        (10, 10, 60.0, 1),  # very slow: never below 1
    ],
)
def test_archival_batches_follow_the_measured_rate(
    size: int, handled: int, elapsed: float, expected: int
) -> None:
    settings = session_archival.Settings(batch_size=500, batch_seconds=0.5)
    assert session_archival.next_batch_size(size, handled, elapsed, settings) == expected
