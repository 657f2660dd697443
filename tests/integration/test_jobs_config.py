"""Daemon configuration: defaults, TOML file, environment, and one-line errors.

The loader's own rules (types, precedence) are unit-tested in tests/unit/test_settings.py.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sessionkeeper.daemon.config import load_config
from sessionkeeper.daemon.schedule import Schedule
from sessionkeeper.jobs import JOB_NAMES
from store import StoreConfig
from store.errors import ConfigurationError


def test_defaults() -> None:
    config = load_config({})
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)
    assert config.database_url is None
    assert list(config.jobs) == list(JOB_NAMES)
    archival = config.jobs["session_archival"]
    assert archival.schedule.interval_seconds == 3600
    assert (archival.enabled, archival.coalesce, archival.misfire_grace_seconds) == (
        True,
        True,
        300,
    )
    assert archival.settings.idle_seconds == 30 * 86400
    assert archival.settings.purge_after_seconds == 0
    assert config.jobs["proactive_reload"].jitter_seconds == 6
    # Batches back to back unless a pause is configured.
    assert {job.settings.pause_seconds for job in config.jobs.values()} == {0.0}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sessionkeeper.toml"
    path.write_text(
        'database_url = "postgresql://file/db"\n'
        "metrics_port = 9000\n"
        "workers = 3\n"
        "[jobs.usage_rollup]\n"
        'schedule = "0 3 * * *"\n'
        "prune_after_seconds = 86400\n"
        "enabled = false\n"
        "pause_seconds = 2\n"
        "[jobs.session_archival]\n"
        "schedule = 120\n"
        "batch_size = 50\n"
        "pause_seconds = 0.5\n"
    )
    env = {
        "SESSIONKEEPER_METRICS_PORT": "9100",
        "SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE": "70",
        "SESSIONKEEPER_SESSION_ARCHIVAL_PAUSE_SECONDS": "0.05",
        "SESSIONKEEPER_USAGE_ROLLUP_ENABLED": "yes",
    }
    config = load_config(env, path)
    assert config.database_url == "postgresql://file/db"
    assert (config.metrics_port, config.workers) == (9100, 3)
    rollup = config.jobs["usage_rollup"]
    assert rollup.schedule.cron == "0 3 * * *" and rollup.enabled
    assert (rollup.settings.prune_after_seconds, rollup.settings.pause_seconds) == (86400, 2.0)
    archival = config.jobs["session_archival"]
    assert (archival.schedule.interval_seconds, archival.settings.batch_size) == (120, 70)
    assert archival.settings.pause_seconds == 0.05

    env["DATABASE_URL"] = "postgresql://plain/db"
    assert load_config(env, path).database_url == "postgresql://plain/db"
    env["SESSIONKEEPER_DATABASE_URL"] = "postgresql://prefixed/db"
    assert load_config(env, path).database_url == "postgresql://prefixed/db"


def test_the_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('proactive_channel = "tg"\n')
    config = load_config({"SESSIONKEEPER_CONFIG": str(path)})
    assert config.store.proactive_channel == "tg"
    assert config.config_file == str(path)


def test_the_store_settings_come_from_the_same_file_and_environment(tmp_path: Path) -> None:
    """The daemon reads the store's settings it shares with the bots (the link-code failure
    window, the proactive channel) by the same rules as the bots' StoreConfig does."""
    path = tmp_path / "c.toml"
    path.write_text('link_failure_window = "20m"\nproactive_channel = "tg"\nmax_size = 3\n')
    env = {"SESSIONKEEPER_CONFIG": str(path), "SESSIONKEEPER_PROACTIVE_CHANNEL": "whatsapp"}
    config = load_config(env)
    assert config.store == StoreConfig.from_env(env)
    assert config.store.link_failure_window == timedelta(minutes=20)
    assert (config.store.proactive_channel, config.store.max_size) == ("whatsapp", 3)


def test_old_job_names_of_store_settings_still_work_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[jobs.proactive_reload]\nchannel = "tg"\n')
    env = {"SESSIONKEEPER_LINK_CODE_EXPIRY_FAILURE_WINDOW_SECONDS": "1800"}
    with caplog.at_level(logging.WARNING, logger="sessionkeeper.settings"):
        config = load_config(env, path)
    assert config.store.link_failure_window == timedelta(seconds=1800)
    assert config.store.proactive_channel == "tg"
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "SESSIONKEEPER_LINK_CODE_EXPIRY_FAILURE_WINDOW_SECONDS is deprecated" in warned
    assert "SESSIONKEEPER_LINK_FAILURE_WINDOW" in warned
    assert "jobs.proactive_reload.channel" in warned and "SESSIONKEEPER_PROACTIVE_CHANNEL" in warned
    # The new name wins over the old one.
    env["SESSIONKEEPER_LINK_FAILURE_WINDOW"] = "5m"
    assert load_config(env, path).store.link_failure_window == timedelta(minutes=5)
    # A bad value under the old name is refused under that name.
    with pytest.raises(ConfigurationError, match="FAILURE_WINDOW_SECONDS"):
        load_config({"SESSIONKEEPER_LINK_CODE_EXPIRY_FAILURE_WINDOW_SECONDS": "soon"})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SESSIONKEEPER_METRICS_PORT": "http"}, "SESSIONKEEPER_METRICS_PORT"),
        ({"SESSIONKEEPER_WORKERS": "0"}, "SESSIONKEEPER_WORKERS"),
        ({"SESSIONKEEPER_LOG_FORMAT": "xml"}, "SESSIONKEEPER_LOG_FORMAT"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE": "often"}, "SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE": "61 * * * *"}, "USAGE_ROLLUP_SCHEDULE"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE": "0s"}, "SESSIONKEEPER_USAGE_ROLLUP_SCHEDULE"),
        ({"SESSIONKEEPER_SESSION_ARCHIVAL_BATCH_SIZE": "0"}, "SESSION_ARCHIVAL_BATCH_SIZE"),
        ({"SESSIONKEEPER_LINK_CODE_EXPIRY_ENABLED": "maybe"}, "LINK_CODE_EXPIRY_ENABLED"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_PAUSE_SECONDS": "-0.1"}, "USAGE_ROLLUP_PAUSE_SECONDS"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_PAUSE_SECONDS": "1s"}, "USAGE_ROLLUP_PAUSE_SECONDS"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_PAUSE_SECONDS": "nan"}, "USAGE_ROLLUP_PAUSE_SECONDS"),
        ({"SESSIONKEEPER_MIGRATE_ON_START": "flase"}, "SESSIONKEEPER_MIGRATE_ON_START"),
        ({"SESSIONKEEPER_DURABLE_RATE_LIMITS": "flase"}, "SESSIONKEEPER_DURABLE_RATE_LIMITS"),
        ({"SESSIONKEEPER_MAX_SIZE": "0"}, "SESSIONKEEPER_MAX_SIZE"),
        ({"SESSIONKEEPER_LINK_FAILURE_WINDOW": "a while"}, "SESSIONKEEPER_LINK_FAILURE_WINDOW"),
        ({"SESSIONKEEPER_USAGE_ROLLUP_MISFIRE_GRACE_SECONDS": "0"}, "MISFIRE_GRACE_SECONDS"),
        (
            {
                "SESSIONKEEPER_RATE_LIMIT_CLEANUP_SCHEDULE": "10",
                "SESSIONKEEPER_RATE_LIMIT_CLEANUP_JITTER_SECONDS": "6",
            },
            "SESSIONKEEPER_RATE_LIMIT_CLEANUP_JITTER_SECONDS",
        ),
        ({"SESSIONKEEPER_CONFIG": "/nonexistent/sk.toml"}, "/nonexistent/sk.toml"),
    ],
)
def test_a_bad_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_config(env)
    assert named in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("metrics_prot = 1\n", "metrics_prot"),
        ("[jobs.nope]\nschedule = 1\n", "jobs.nope"),
        ("[jobs.usage_rollup]\nidle_seconds = 1\n", "jobs.usage_rollup.idle_seconds"),
        ("[jobs.usage_rollup]\nbatch_size = true\n", "jobs.usage_rollup.batch_size"),
        ("[jobs.usage_rollup]\npause_seconds = true\n", "jobs.usage_rollup.pause_seconds"),
        ("[jobs.usage_rollup]\npause_seconds = -1\n", "jobs.usage_rollup.pause_seconds"),
        ("[jobs.usage_rollup]\nchannel = 'tg'\n", "jobs.usage_rollup.channel"),
        ("max_size = 0\n", "max_size in"),
        ("channels = [1, 2]\n", "channels in"),
        ("workers = [\n", "invalid configuration file"),
    ],
)
def test_a_bad_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as error:
        load_config({}, path)
    assert named in str(error.value)


def test_passwords_never_appear_in_errors() -> None:
    with pytest.raises(ConfigurationError) as error:
        load_config({"SESSIONKEEPER_WORKERS": "postgresql://u:hunter2@h/db"})
    assert "hunter2" not in str(error.value)


def test_interval_schedules_are_aligned_so_replicas_share_slots() -> None:
    schedule = Schedule.parse("5m")
    assert isinstance(schedule.slots(), IntervalTrigger)
    assert schedule.trigger(jitter_seconds=20).jitter_seconds == 20
    now = datetime(2026, 3, 10, 12, 7, 31, tzinfo=UTC)
    slot = datetime(2026, 3, 10, 12, 5, tzinfo=UTC)
    assert schedule.slot(now) == slot
    # Wherever a jittered run starts within the period, it belongs to the same slot.
    assert schedule.slot(slot + timedelta(seconds=20)) == slot
    fire = Schedule.parse("300").trigger(0).get_next_fire_time(None, now)
    assert fire == datetime(2026, 3, 10, 12, 10, tzinfo=UTC)


def test_cron_schedules_have_slots_too() -> None:
    schedule = Schedule.parse("30 3 * * 1")  # Mondays 03:30 UTC
    assert isinstance(schedule.slots(), CronTrigger)
    assert schedule.describe() == "cron 30 3 * * 1 UTC"
    monday = datetime(2026, 3, 9, 3, 30, tzinfo=UTC)
    assert schedule.slot(monday + timedelta(days=2)) == monday
    assert schedule.slot(monday + timedelta(seconds=5)) == monday
    assert schedule.slot(monday - timedelta(seconds=1)) == monday - timedelta(days=7)
    assert schedule.shortest_period_seconds() == 7 * 86400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("*/5 * * * *", 300),
        ("30 3 * * *", 86400),
        # Weekdays: a day, although from Friday evening the next gap is three days.
        ("0 9 * * 1-5", 86400),
        ("0 0 1 * *", 31 * 86400),  # monthly: the median month
        ("0 0 1 1 *", 365 * 86400),
    ],
)
def test_a_schedules_typical_period_is_its_median_gap(text: str, seconds: int) -> None:
    friday_evening = datetime(2026, 3, 13, 18, 0, tzinfo=UTC)
    schedule = Schedule.parse(text)
    assert schedule.typical_period_seconds(friday_evening) == seconds
    assert schedule.typical_period_seconds() == seconds


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("0", {6}),
        ("7", {6}),
        ("1-5", {0, 1, 2, 3, 4}),
        ("sat,0", {5, 6}),
        ("*/2", {6, 1, 3, 5}),
        ("mon-fri", {0, 1, 2, 3, 4}),
    ],
)
def test_cron_days_of_week_count_from_sunday_as_in_cron(field: str, days: set[int]) -> None:
    trigger = Schedule.parse(f"0 12 * * {field}").trigger(0)
    monday = datetime(2026, 3, 9, tzinfo=UTC)
    fired = set()
    for offset in range(7):
        fire = trigger.get_next_fire_time(None, monday + timedelta(days=offset))
        if fire is not None and fire.date() == (monday + timedelta(days=offset)).date():
            fired.add(fire.weekday())
    assert fired == days


def test_the_settings_document_lists_every_setting() -> None:
    document = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    daemon = document.split("\n## Daemon settings\n", 1)[1]
    store = document.split("\n## Store settings\n", 1)[1].split("\n## ", 1)[0]
    for field in dataclasses.fields(StoreConfig):
        assert f"`{field.name}`" in store, field.name
    config = load_config({})
    not_keys = ("jobs", "store", "config_file")
    names = [f.name for f in dataclasses.fields(config) if f.name not in not_keys]
    for name in names:
        assert f"`SESSIONKEEPER_{name.upper()}`" in daemon or name == "database_url", name
        assert f"`{name}`" in daemon, name
    # A job of an integration may be documented with it, in docs/ (checkpoint_retention:
    # docs/langgraph.md).
    docs = daemon + "".join(
        p.read_text() for p in (Path(__file__).resolve().parents[2] / "docs").glob("*.md")
    )
    for job in config.jobs.values():
        assert f"`{job.name}`" in docs
        for field in dataclasses.fields(job.settings):
            assert f"`{field.name}`" in docs, (job.name, field.name)
