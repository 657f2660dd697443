"""The daemon's configuration, read by the one settings loader (``store.settings``).

``SESSIONKEEPER_*`` environment variables over an optional TOML file (``--config`` or
``SESSIONKEEPER_CONFIG``) over the defaults. The daemon's own settings are top-level keys of
the file and ``SESSIONKEEPER_<KEY>`` variables, beside the store's (``StoreConfig``: the jobs
read the settings they share with the store from there); job settings sit in ``[jobs.<job>]``
tables and ``SESSIONKEEPER_<JOB>_<KEY>`` variables. A bad value raises ``ConfigurationError``
naming the setting and the accepted form, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sessionkeeper.jobs.registry import JOBS
from sessionkeeper.jobs.window import Window, zone
from store import settings
from store.config import StoreConfig
from store.errors import ConfigurationError
from store.settings import CENTURY_SECONDS, KeyPath, SettingError, Source, parse, require

from .pacing import YieldSettings
from .schedule import Schedule

# Job settings that became store settings (one owner per value). The old names still work,
# with a warning in the log, until a later release removes them.
DEPRECATED_STORE_SETTINGS: Mapping[str, tuple[KeyPath, ...]] = {
    "link_failure_window": (("jobs", "link_code_expiry", "failure_window_seconds"),),
    "proactive_channel": (("jobs", "proactive_reload", "channel"),),
}


@dataclass(frozen=True)
class JobConfig:
    """How the daemon schedules one job (the keys of its ``[jobs.<job>]`` table beside the
    job's own ``Settings``), and those settings."""

    name: str
    schedule: Schedule
    settings: Any  # the job module's Settings
    jitter_seconds: int = 0
    enabled: bool = True
    misfire_grace_seconds: int = 300
    coalesce: bool = True
    # When the job may run (None: any time); in the daemon's window_timezone.
    window: Window | None = None

    def __post_init__(self) -> None:
        # At most half the period, so that jittered runs never swap places.
        half = int(self.schedule.shortest_period_seconds() // 2)
        require(
            0 <= self.jitter_seconds <= half,
            "jitter_seconds",
            self.jitter_seconds,
            f"a whole number from 0 to {half} (half the schedule's period)",
        )
        require(
            self.misfire_grace_seconds >= 1,
            "misfire_grace_seconds",
            self.misfire_grace_seconds,
            "a whole number of at least 1",
        )


# Keys of a [jobs.<job>] table beside the job's own Settings.
SCHEDULING_KEYS = tuple(
    field.name for field in dataclasses.fields(JobConfig) if field.name not in ("name", "settings")
)


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # The HTTP port's bounds (daemon/endpoints.py): seconds to send a request's head, and open
    # connections (keep it well below the process's file-descriptor limit, LimitNOFILE).
    metrics_read_timeout_seconds: int = 5
    metrics_max_connections: int = 256
    replica_id: str = ""  # empty: <hostname>-<pid>
    log_format: str = "text"
    workers: int = 2
    pool_size: int = 4
    gauge_interval_seconds: int = 60
    statement_timeout_seconds: int = 60
    lock_timeout_seconds: int = 10
    ledger_retention_seconds: int = 30 * 86400
    migrate_on_start: bool = True
    # The time zone of the jobs' maintenance windows (schedules stay in UTC).
    window_timezone: str = "UTC"
    # Yielding to the bots (sessionkeeper/daemon/pacing.py, docs/daemon.md).
    yield_to_bots: bool = True
    yield_budget: float = 0.5
    yield_min_rise_seconds: float = 0.002
    yield_step_seconds: float = 0.1
    yield_max_pause_seconds: float = 2.0
    yield_sample_every_seconds: float = 0.05
    # Not settings of their own: filled in by load_config.
    jobs: Mapping[str, JobConfig] = dataclasses.field(default_factory=dict)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    config_file: str | None = None

    def __post_init__(self) -> None:
        # Upper bounds: what the socket, the thread pool and PostgreSQL take (its timeouts are
        # milliseconds in an int), so that an accepted value cannot fail later.
        for name, minimum, maximum in (
            ("metrics_port", 0, 65535),
            ("metrics_read_timeout_seconds", 1, 3600),
            ("metrics_max_connections", 1, 65535),
            ("workers", 1, 1000),
            ("pool_size", 2, 1000),
            ("gauge_interval_seconds", 1, 86400),
            ("statement_timeout_seconds", 0, 2_147_483),
            ("lock_timeout_seconds", 0, 2_147_483),
            ("ledger_retention_seconds", 3600, CENTURY_SECONDS),
        ):
            value = getattr(self, name)
            require(
                minimum <= value <= maximum,
                name,
                value,
                f"a whole number from {minimum} to {maximum}",
            )
        require(self.log_format in ("text", "json"), "log_format", self.log_format, "text or json")
        try:
            zone(self.window_timezone)
        except ValueError:
            raise SettingError(
                "window_timezone",
                self.window_timezone,
                "a time zone name of the IANA database (e.g. UTC, Europe/Berlin)",
            ) from None
        for key, most in (
            ("yield_budget", 100.0),
            ("yield_min_rise_seconds", 60.0),
            ("yield_step_seconds", 60.0),
            ("yield_max_pause_seconds", 3600.0),
        ):
            number = getattr(self, key)
            require(0 <= number <= most, key, number, f"a number from 0 to {most:g}")
        # 0 would make the probe thread spin: at most 1,000 probes a second.
        every = self.yield_sample_every_seconds
        require(
            0.001 <= every <= 60, "yield_sample_every_seconds", every, "a number from 0.001 to 60"
        )

    @property
    def yielding(self) -> YieldSettings:
        return YieldSettings(
            enabled=self.yield_to_bots,
            budget=self.yield_budget,
            min_rise_seconds=self.yield_min_rise_seconds,
            step_seconds=self.yield_step_seconds,
            max_pause_seconds=self.yield_max_pause_seconds,
            sample_every=self.yield_sample_every_seconds,
        )


# The fields of Config that are no top-level keys of the file.
_NOT_KEYS = ("jobs", "store", "config_file")


def load_config(
    env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None
) -> Config:
    source = Source(env, config_file)
    _check_known_keys(source)
    derived: dict[str, Any] = {
        "jobs": {},  # below
        "store": settings.load(StoreConfig, source, deprecated=DEPRECATED_STORE_SETTINGS),
        "config_file": source.path,
        "database_url": settings.database_url(source),
    }
    config = settings.load(Config, source, overrides=derived)
    # The jobs' windows are read in the daemon's window_timezone, checked by now.
    tz = zone(config.window_timezone)
    jobs = {name: _job_config(name, source, tz) for name in JOBS}
    config = dataclasses.replace(config, jobs=jobs)
    if not config.replica_id:
        config = dataclasses.replace(config, replica_id=f"{socket.gethostname()}-{os.getpid()}")
    return config


def _job_config(name: str, source: Source, tz: ZoneInfo) -> JobConfig:
    spec = JOBS[name]
    table = ("jobs", name)
    schedule = _schedule(source, table, spec.default_schedule)
    derived: dict[str, Any] = {
        "name": name,
        "schedule": schedule,
        "settings": settings.load(spec.settings, source, table=table),
        "window": _window(source, table, tz),
    }
    if source.find(*table, "enabled") is None:
        derived["enabled"] = spec.enabled_by_default
    if source.find(*table, "jitter_seconds") is None:
        # 10 s, and at most a tenth of the period.
        derived["jitter_seconds"] = int(min(10, schedule.shortest_period_seconds() // 10))
    return settings.load(JobConfig, source, table=table, overrides=derived)


def _schedule(source: Source, table: KeyPath, default: str) -> Schedule:
    found = source.find(*table, "schedule")
    if found is None:
        return Schedule.parse(default)
    # TOML: schedule = 300 is an interval in seconds, like "300".
    is_number = isinstance(found.value, int) and not isinstance(found.value, bool)
    text = str(found.value) if is_number else parse(found, str)
    try:
        return Schedule.parse(text)
    except ValueError as exc:
        raise SettingError(found.where, found.value, str(exc)) from None


def _window(source: Source, table: KeyPath, tz: ZoneInfo) -> Window | None:
    found = source.find(*table, "window")
    text = parse(found, str | None) if found else None  # "none": no window
    if found is None or text is None:
        return None
    try:
        return Window.parse(text, tz)
    except ValueError as exc:
        raise SettingError(found.where, found.value, str(exc)) from None


def _check_known_keys(source: Source) -> None:
    """Refuse a key of the file that no setting reads (most likely a typo)."""
    store_keys = {field.name for field in dataclasses.fields(StoreConfig)}
    daemon_keys = {field.name for field in dataclasses.fields(Config)} - set(_NOT_KEYS)
    deprecated = {path for paths in DEPRECATED_STORE_SETTINGS.values() for path in paths}
    for key, value in source.file.items():
        if key == "jobs" and isinstance(value, dict):
            for job, table in value.items():
                if job not in JOBS or not isinstance(table, dict):
                    raise ConfigurationError(f"unknown job jobs.{job} in {source.path}")
                job_keys = set(SCHEDULING_KEYS)
                job_keys |= {field.name for field in dataclasses.fields(JOBS[job].settings)}
                job_keys |= {path[2] for path in deprecated if path[1] == job}
                for job_key in table:
                    if job_key not in job_keys:
                        raise ConfigurationError(
                            f"unknown setting jobs.{job}.{job_key} in {source.path}"
                        )
        elif key not in store_keys | daemon_keys:
            raise ConfigurationError(f"unknown setting {key} in {source.path}")


def settings_reference() -> list[tuple[str, str, str]]:
    """``(environment variable, TOML key, default)`` of every setting the daemon reads: its own,
    the store's and each job's, generated from the dataclasses (``sessionkeeper run --help``)."""
    defaults = load_config(env={})
    rows = [(settings.variable(("database_url",)), "database_url", "DATABASE_URL, else embedded")]

    def add(instance: Any, table: KeyPath, skip: tuple[str, ...] = ()) -> None:
        for item in dataclasses.fields(instance):
            if item.init and item.name not in skip and (*table, item.name) != ("database_url",):
                path = (*table, item.name)
                value = _shown(getattr(instance, item.name))
                rows.append((settings.variable(path), ".".join(path), value))

    add(dataclasses.replace(defaults, replica_id=""), (), _NOT_KEYS)
    add(defaults.store, ())
    for name, job in defaults.jobs.items():
        add(job, ("jobs", name), ("name", "settings"))
        add(job.settings, ("jobs", name))
    return rows


def _shown(value: object) -> str:
    if isinstance(value, Schedule):
        return value.describe()
    if isinstance(value, Window):
        return str(value)
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    if value is None or value == "":
        return "none" if value is None else "(automatic)"
    return str(value)
