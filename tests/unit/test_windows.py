"""Maintenance windows (jobs/window.py) and their settings: parsing, wrap-around, time zones
and daylight saving time, and one-line refusals at start-up. No database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sessionkeeper.daemon.config import load_config, settings_reference
from sessionkeeper.daemon.logs import RunLog
from sessionkeeper.daemon.metrics import DaemonMetrics
from sessionkeeper.jobs.runner import RunReport
from sessionkeeper.jobs.window import Window, zone
from store.errors import ConfigurationError

UTC_ZONE = zone("UTC")
BERLIN = zone("Europe/Berlin")


def at(text: str) -> datetime:
    """A UTC instant, ``"2026-01-05 03:00"``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("02:00-05:00", 120, 300),
        (" 2:00 - 5:30 ", 120, 330),
        ("22:00-02:00", 1320, 120),
        ("20:00-24:00", 1200, 1440),
        ("23:30-00:00", 1410, 0),
    ],
)
def test_windows_are_parsed(text: str, start: int, end: int) -> None:
    assert Window.parse(text, UTC_ZONE) == Window(start, end, UTC_ZONE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:00",
        "2-5",
        "02:00-05:00-07:00",
        "24:00-02:00",  # 24:00 only ends a window
        "02:60-05:00",
        "02:00-24:30",
        "02:00-02:00",  # empty, or the whole day
        "00:00-00:00",
        "00:00-24:00",
        "0200-0500",
        "02:00 to 05:00",
    ],
)
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        Window.parse(text, UTC_ZONE)


@pytest.mark.parametrize(
    ("window", "now", "is_open"),
    [
        ("02:00-05:00", "2026-01-05 01:59:59", False),
        ("02:00-05:00", "2026-01-05 02:00", True),
        ("02:00-05:00", "2026-01-05 04:59:59.9", True),
        ("02:00-05:00", "2026-01-05 05:00", False),  # the end is not in the window
        # Wrapping midnight: open late in the evening and early in the morning.
        ("22:00-02:00", "2026-01-05 21:59", False),
        ("22:00-02:00", "2026-01-05 22:00", True),
        ("22:00-02:00", "2026-01-05 23:59:59", True),
        ("22:00-02:00", "2026-01-06 00:00", True),
        ("22:00-02:00", "2026-01-06 01:59", True),
        ("22:00-02:00", "2026-01-06 02:00", False),
        ("22:00-02:00", "2026-01-06 12:00", False),
        ("20:00-24:00", "2026-01-06 23:59:59", True),
        ("20:00-24:00", "2026-01-06 00:00", False),
    ],
)
def test_a_window_is_open_from_its_start_until_its_end(
    window: str, now: str, is_open: bool
) -> None:
    assert Window.parse(window, UTC_ZONE).is_open(at(now)) is is_open


def test_a_window_is_read_in_its_time_zone_in_winter_and_in_summer() -> None:
    window = Window.parse("02:00-05:00", BERLIN)
    # Berlin is UTC+1 in January: 02:00 there is 01:00 UTC.
    assert not window.is_open(at("2026-01-05 00:59"))
    assert window.is_open(at("2026-01-05 01:00"))
    assert not window.is_open(at("2026-01-05 04:00"))
    # ... and UTC+2 in July: 02:00 there is 00:00 UTC.
    assert window.is_open(at("2026-07-06 00:00"))
    assert not window.is_open(at("2026-07-06 03:00"))
    assert str(window) == "02:00-05:00 Europe/Berlin"


def test_daylight_saving_time_keeps_the_windows_wall_clock_hours() -> None:
    window = Window.parse("02:00-03:00", BERLIN)
    # 2026-03-29 01:00 UTC: the clocks go from 02:00 to 03:00; 02:xx never happens that night.
    assert not window.is_open(at("2026-03-29 00:59"))  # 01:59 CET
    assert not window.is_open(at("2026-03-29 01:00"))  # 03:00 CEST
    # 2026-10-25 01:00 UTC: the clocks go from 03:00 back to 02:00; 02:xx happens twice.
    assert window.is_open(at("2026-10-25 00:00"))  # 02:00 CEST
    assert window.is_open(at("2026-10-25 01:30"))  # 02:30 CET
    assert not window.is_open(at("2026-10-25 02:00"))  # 03:00 CET


@pytest.mark.parametrize(
    ("window", "tz", "now", "opens"),
    [
        ("02:00-05:00", "UTC", "2026-01-05 12:00", "2026-01-06 02:00"),
        ("02:00-05:00", "UTC", "2026-01-05 01:00", "2026-01-05 02:00"),
        ("02:00-05:00", "UTC", "2026-01-05 03:00", "2026-01-05 03:00"),  # open: now
        ("22:00-02:00", "UTC", "2026-01-05 02:00", "2026-01-05 22:00"),
        ("02:00-05:00", "Europe/Berlin", "2026-01-05 12:00", "2026-01-06 01:00"),
        ("02:00-05:00", "Europe/Berlin", "2026-07-05 12:00", "2026-07-06 00:00"),
        # The night the clocks go back, 24 wall-clock hours are 25 real ones.
        ("04:00-05:00", "Europe/Berlin", "2026-10-24 12:00", "2026-10-25 03:00"),
    ],
)
def test_a_waiting_job_knows_when_its_window_opens(
    window: str, tz: str, now: str, opens: str
) -> None:
    assert Window.parse(window, zone(tz)).next_open(at(now)) == at(opens)


@pytest.mark.parametrize(
    ("window", "tz", "now", "opened"),
    [
        ("02:00-05:00", "UTC", "2026-01-05 12:00", "2026-01-05 02:00"),
        ("02:00-05:00", "UTC", "2026-01-05 02:00", "2026-01-05 02:00"),
        ("02:00-05:00", "UTC", "2026-01-05 01:59", "2026-01-04 02:00"),
        ("22:00-02:00", "UTC", "2026-01-06 01:00", "2026-01-05 22:00"),
        ("22:00-02:00", "Europe/Berlin", "2026-01-05 23:00", "2026-01-05 21:00"),
        ("22:00-02:00", "Europe/Berlin", "2026-07-05 23:00", "2026-07-05 20:00"),
    ],
)
def test_the_alerts_know_when_a_window_last_opened(
    window: str, tz: str, now: str, opened: str
) -> None:
    assert Window.parse(window, zone(tz)).last_opened(at(now)) == at(opened)


def test_the_window_and_its_time_zone_are_settings(tmp_path: Path) -> None:
    config = load_config({})
    assert config.window_timezone == "UTC"
    assert {job.window for job in config.jobs.values()} == {None}

    path = tmp_path / "sessionkeeper.toml"
    path.write_text(
        'window_timezone = "Europe/Berlin"\n'
        "[jobs.session_archival]\n"
        'window = "22:00-02:00"\n'
        "[jobs.usage_rollup]\n"
        'window = "01:00-02:00"\n'
    )
    env = {"SESSIONKEEPER_USAGE_ROLLUP_WINDOW": "none"}
    config = load_config(env, path)
    assert config.jobs["session_archival"].window == Window(1320, 120, BERLIN)
    assert config.jobs["usage_rollup"].window is None  # the environment turned it off
    assert config.jobs["link_code_expiry"].window is None
    reference = {variable: default for variable, _, default in settings_reference()}
    assert reference["SESSIONKEEPER_WINDOW_TIMEZONE"] == "UTC"
    assert reference["SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW"] == "none"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW": "25:00-03:00"},
            "invalid setting SESSIONKEEPER_SESSION_ARCHIVAL_WINDOW: '25:00-03:00' is not a window"
            " HH:MM-HH:MM",
        ),
        (
            {"SESSIONKEEPER_USAGE_ROLLUP_WINDOW": "2am-5am"},
            "invalid setting SESSIONKEEPER_USAGE_ROLLUP_WINDOW: '2am-5am' is not a window",
        ),
        (
            {"SESSIONKEEPER_WINDOW_TIMEZONE": "Europe/Atlantis"},
            "invalid setting SESSIONKEEPER_WINDOW_TIMEZONE: 'Europe/Atlantis' is not a time zone",
        ),
        (
            # A path is no zone name, though zoneinfo could be made to read it.
            {"SESSIONKEEPER_WINDOW_TIMEZONE": "/etc/localtime"},
            "invalid setting SESSIONKEEPER_WINDOW_TIMEZONE: '/etc/localtime' is not a time zone",
        ),
    ],
)
def test_a_bad_window_or_time_zone_is_refused_in_one_line(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_config(env)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_a_bad_window_in_the_file_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[jobs.session_archival]\nwindow = 2\n")
    with pytest.raises(ConfigurationError, match=r"jobs\.session_archival\.window in "):
        load_config({}, path)


def test_runs_the_window_stopped_are_counted_apart_from_other_stops() -> None:
    metrics = DaemonMetrics(["usage_rollup"])

    def count(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"job_name": "usage_rollup", **labels})

    closed = {"stopped": True, "reason": "window closed", "window": "02:00-05:00 UTC"}
    metrics.observe(RunReport("usage_rollup", "stopped", 4, 1.0, 0.0, details=closed))
    metrics.observe(RunReport("usage_rollup", "stopped", 2, 1.0, 0.0, details={"stopped": True}))
    assert count("sessionkeeper_job_runs_total", job="usage_rollup", outcome="stopped") == 2
    assert count("sessionkeeper_job_window_stops_total") == 1


def test_the_window_gauges_are_read_at_scrape_time() -> None:
    clock = [at("2026-01-05 12:00")]
    windows = {"usage_rollup": Window.parse("02:00-05:00", UTC_ZONE)}
    metrics = DaemonMetrics(["usage_rollup", "session_archival"], windows, lambda: clock[0])

    def gauge(name: str, job: str) -> float | None:
        return metrics.registry.get_sample_value(f"sessionkeeper_job_{name}", {"job_name": job})

    assert gauge("window_open", "usage_rollup") == 0
    assert gauge("window_next_open_timestamp_seconds", "usage_rollup") == (
        at("2026-01-06 02:00").timestamp()
    )
    assert gauge("window_opened_timestamp_seconds", "usage_rollup") == (
        at("2026-01-05 02:00").timestamp()
    )
    assert gauge("window_open", "session_archival") == 1
    assert gauge("window_next_open_timestamp_seconds", "session_archival") == 0
    assert gauge("window_opened_timestamp_seconds", "session_archival") == 0
    clock[0] = at("2026-01-06 02:30")
    assert gauge("window_open", "usage_rollup") == 1
    assert gauge("window_next_open_timestamp_seconds", "usage_rollup") == 0
    assert gauge("window_opened_timestamp_seconds", "usage_rollup") == (
        at("2026-01-06 02:00").timestamp()
    )


def test_a_closed_window_is_one_info_line_per_closed_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_run = RunLog("a")

    def report(outcome: str, opens: str | None = None, job: str = "usage_rollup") -> RunReport:
        details = {"window": "02:00-05:00 UTC", "window_opens": opens} if opens else {}
        error = "outside its window 02:00-05:00 UTC" if opens else None
        return RunReport(job, outcome, 0, 0.01, 0.0, None, error, details)

    tonight, tomorrow = "2026-03-12T02:00:00+00:00", "2026-03-13T02:00:00+00:00"
    with caplog.at_level(logging.DEBUG, logger="sessionkeeper"):
        for each in [
            report("skipped", tonight),
            report("skipped", tonight),
            report("skipped", tonight, job="session_archival"),  # a job of its own
            report("skipped", tonight),
            report("success"),
            report("skipped", tomorrow),
            report("skipped"),  # another replica holds the lock: every time
            report("skipped"),
        ]:
            log_run(each)
    levels = [
        (record.levelname, record.getMessage().split(" rows=")[0]) for record in caplog.records
    ]
    assert levels == [
        ("INFO", "job usage_rollup skipped"),
        ("DEBUG", "job usage_rollup skipped"),
        ("INFO", "job session_archival skipped"),
        ("DEBUG", "job usage_rollup skipped"),
        ("INFO", "job usage_rollup success"),
        ("INFO", "job usage_rollup skipped"),
        ("INFO", "job usage_rollup skipped"),
        ("INFO", "job usage_rollup skipped"),
    ]
