"""Daemon configuration: ``SESSIONKEEPER_*`` environment variables over an optional TOML file.

Every setting has a default; a TOML file (``--config`` or ``SESSIONKEEPER_CONFIG``) overrides
the defaults and the environment overrides the file. Global settings are top-level keys of
the file and ``SESSIONKEEPER_<KEY>`` variables; job settings sit in ``[jobs.<job>]`` tables and
``SESSIONKEEPER_<JOB>_<KEY>`` variables. A bad value raises ``ConfigurationError`` naming the
setting.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import socket
import statistics
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from store.connection import redact
from store.errors import ConfigurationError

from . import JOB_NAMES
from .registry import JOBS

PREFIX = "SESSIONKEEPER_"
# Interval schedules are aligned to this instant, so that every replica fires at the same
# moments and their runs fall into the same slots.
ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Schedule:
    """An interval ("300", "5m", "1h") or a five-field cron expression, in UTC."""

    text: str
    interval_seconds: int | None = None
    cron: str | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        match = _INTERVAL.match(text)
        if match:
            seconds = int(match[1]) * _UNITS[match[2]]
            if seconds < 1:
                raise ValueError("an interval must be at least 1 second")
            return cls(text.strip(), interval_seconds=seconds)
        try:
            _cron_trigger(text)
        except ValueError as exc:
            raise ValueError(
                f"expected an interval such as 300, 5m, 1h or a cron expression ({exc})"
            ) from None
        return cls(text.strip(), cron=text.strip())

    def trigger(self, jitter_seconds: int) -> BaseTrigger:
        jitter = jitter_seconds or None
        if self.interval_seconds is not None:
            return IntervalTrigger(
                seconds=self.interval_seconds, start_date=ANCHOR, timezone=UTC, jitter=jitter
            )
        trigger = _cron_trigger(self.cron)
        trigger.jitter = jitter
        return trigger

    def describe(self) -> str:
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds}s"
        return f"cron {self.cron} UTC"

    def shortest_period_seconds(self, now: datetime | None = None) -> float:
        if self.interval_seconds is not None:
            return float(self.interval_seconds)
        return min(self._cron_gaps(12, now), default=86400.0)

    def typical_period_seconds(self, now: datetime | None = None) -> float:
        """The interval, or for a cron schedule the median gap between its coming fire times.

        The median, not the next gap: "09:00 on weekdays" is a daily job whether the daemon
        starts on a Tuesday or on a Friday evening (when the next gap is three days).
        """
        if self.interval_seconds is not None:
            return float(self.interval_seconds)
        gaps = self._cron_gaps(25, now)
        return statistics.median_low(gaps) if gaps else 86400.0

    def _cron_gaps(self, fires_wanted: int, now: datetime | None) -> list[float]:
        """Seconds between the next ``fires_wanted`` fire times of the cron schedule."""
        trigger = _cron_trigger(self.cron)
        fires: list[datetime] = []
        previous: datetime | None = None
        cursor = now or datetime.now(UTC)
        for _ in range(fires_wanted):
            fire = trigger.get_next_fire_time(previous, cursor)
            if fire is None:
                break
            fires.append(fire)
            previous, cursor = fire, fire + timedelta(seconds=1)
        return [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]

    def slot(self, now: datetime) -> datetime:
        """The scheduled (unjittered) fire time that a run starting at ``now`` belongs to."""
        if self.interval_seconds is not None:
            periods = (now - ANCHOR) // timedelta(seconds=self.interval_seconds)
            return ANCHOR + periods * timedelta(seconds=self.interval_seconds)
        trigger = _cron_trigger(self.cron)
        span = timedelta(minutes=2)
        while span < timedelta(days=1000):
            last: datetime | None = trigger.get_next_fire_time(None, now - span)
            if last is not None and last <= now:
                while True:
                    following: datetime | None = trigger.get_next_fire_time(
                        last, last + timedelta(seconds=1)
                    )
                    if following is None or following > now:
                        return last
                    last = following
            span *= 4
        return now


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_trigger(expression: str | None) -> CronTrigger:
    """A CronTrigger (UTC) reading the day of week as cron does: 0 and 7 are Sunday.

    APScheduler 3 numbers days from Monday = 0, so numeric days are translated to names.
    """
    fields = (expression or "").split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=",".join(_day_names(part) for part in day_of_week.split(",")),
        timezone=UTC,
    )


def _day_names(part: str) -> str:
    """One comma-separated part of a cron day-of-week field, with numbers as day names."""
    span, _, step_text = part.partition("/")
    if not any(c.isdigit() for c in span) and not step_text:
        return part  # *, mon, mon-fri
    if span == "*":
        first, last = 0, 6
    elif "-" in span:
        first, last = (_day_number(d) for d in span.split("-", 1))
    else:
        first = _day_number(span)
        last = 6 if step_text else first  # "1/2" means from Monday on, every second day
    step = int(step_text) if step_text else 1
    if first > last or step < 1:
        raise ValueError(f"invalid day-of-week range {part!r}")
    return ",".join(sorted({_DAY_NAMES[d % 7] for d in range(first, last + 1, step)}))


def _day_number(text: str) -> int:
    if text.lower() in _DAY_NAMES:
        return _DAY_NAMES.index(text.lower())
    if not text.isdigit() or int(text) > 7:
        raise ValueError(f"invalid day of week {text!r}")
    return int(text)


@dataclass(frozen=True)
class JobConfig:
    name: str
    enabled: bool
    schedule: Schedule
    jitter_seconds: int
    misfire_grace_seconds: int
    coalesce: bool
    settings: Any  # the job module's Settings


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    replica_id: str = ""
    log_format: str = "text"
    workers: int = 2
    pool_size: int = 4
    gauge_interval_seconds: int = 60
    statement_timeout_seconds: int = 60
    lock_timeout_seconds: int = 10
    ledger_retention_seconds: int = 30 * 86400
    migrate_on_start: bool = True
    jobs: Mapping[str, JobConfig] = dataclasses.field(default_factory=dict)
    config_file: str | None = None


# Global settings that are loaded generically (database_url is special: DATABASE_URL too).
_GLOBAL_MINIMUM = {
    "metrics_port": 0,
    "workers": 1,
    "pool_size": 2,
    "gauge_interval_seconds": 1,
    "statement_timeout_seconds": 0,
    "lock_timeout_seconds": 0,
    "ledger_retention_seconds": 3600,
}
_JOB_COMMON = ("enabled", "schedule", "jitter_seconds", "misfire_grace_seconds", "coalesce")


class _Source:
    """Where a setting comes from: the environment first, then the TOML file."""

    def __init__(self, env: Mapping[str, str], file_values: dict[str, Any], path: str | None):
        self.env = env
        self.file = file_values
        self.path = path

    def get(self, *keys: str) -> tuple[Any, str] | None:
        env_name = PREFIX + "_".join(keys).upper()
        if self.env.get(env_name, "").strip():
            return self.env[env_name].strip(), env_name
        table: Any = self.file if len(keys) == 1 else self.file.get("jobs", {}).get(keys[0], {})
        if isinstance(table, dict) and keys[-1] in table:
            dotted = keys[0] if len(keys) == 1 else f"jobs.{keys[0]}.{keys[1]}"
            return table[keys[-1]], f"{dotted} in {self.path}"
        return None


def _convert(value: Any, kind: type, where: str, minimum: int | None = None) -> Any:
    def bad(expected: str) -> ConfigurationError:
        shown = redact(str(value))
        return ConfigurationError(f"invalid setting {where}: {shown!r} is not {expected}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad("a boolean (true or false)")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise bad("a whole number")
        try:
            number = int(value)
        except ValueError:
            raise bad("a whole number") from None
        if minimum is not None and number < minimum:
            raise bad(f"a whole number of at least {minimum}")
        return number
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad("a number")
        try:
            decimal = float(value)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(decimal) or (minimum is not None and decimal < minimum):
            raise bad("a number" if minimum is None else f"a number of at least {minimum}")
        return decimal
    if not isinstance(value, str) or not value.strip():
        raise bad("a non-empty string")
    return value.strip()


def load_config(
    env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None
) -> Config:
    env = os.environ if env is None else env
    path = str(config_file) if config_file else env.get(PREFIX + "CONFIG", "").strip() or None
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read configuration file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"invalid configuration file {path}: {exc}") from None
        _check_known_keys(file_values, path)
    source = _Source(env, file_values, path)

    values: dict[str, Any] = {"config_file": path}
    database = source.get("database_url")
    if database and database[1].startswith(PREFIX):
        values["database_url"] = database[0]
    elif env.get("DATABASE_URL", "").strip():
        values["database_url"] = env["DATABASE_URL"].strip()
    elif database:
        values["database_url"] = _convert(database[0], str, database[1])
    for field in dataclasses.fields(Config):
        found = source.get(field.name)
        if field.name in ("database_url", "jobs", "config_file") or found is None:
            continue
        kind = type(field.default)
        values[field.name] = _convert(found[0], kind, found[1], _GLOBAL_MINIMUM.get(field.name))
    if values.get("log_format", "text") not in ("text", "json"):
        where = source.get("log_format")
        raise ConfigurationError(f"invalid setting {where and where[1]}: use text or json")
    values.setdefault("replica_id", f"{socket.gethostname()}-{os.getpid()}")
    values["jobs"] = {name: _job_config(name, source) for name in JOB_NAMES}
    return Config(**values)


def _job_config(name: str, source: _Source) -> JobConfig:
    spec = JOBS[name]
    found = source.get(name, "schedule")
    if found is None:
        text = spec.default_schedule
    elif isinstance(found[0], int) and not isinstance(found[0], bool):
        text = str(found[0])  # TOML: schedule = 300
    else:
        text = _convert(found[0], str, found[1])
    try:
        schedule = Schedule.parse(text)
    except ValueError as exc:
        where = found[1] if found else name
        raise ConfigurationError(f"invalid setting {where}: {exc}") from None

    def setting(key: str, kind: type, default: Any, minimum: int | None = None) -> Any:
        value = source.get(name, key)
        return default if value is None else _convert(value[0], kind, value[1], minimum)

    period = schedule.shortest_period_seconds()
    jitter = setting("jitter_seconds", int, int(min(10, period // 10)), 0)
    if jitter * 2 > period:
        found_jitter = source.get(name, "jitter_seconds")
        where = found_jitter[1] if found_jitter else f"{PREFIX}{name.upper()}_JITTER_SECONDS"
        raise ConfigurationError(
            f"invalid setting {where}: jitter {jitter}s must be at most half the "
            f"schedule's period ({period:g}s)"
        )
    job_values = {}
    for field in dataclasses.fields(spec.settings):
        kind = type(field.default)
        minimum = 1 if field.name == "batch_size" else (0 if kind in (int, float) else None)
        job_values[field.name] = setting(field.name, kind, field.default, minimum)
    return JobConfig(
        name=name,
        enabled=setting("enabled", bool, spec.enabled_by_default),
        schedule=schedule,
        jitter_seconds=jitter,
        misfire_grace_seconds=setting("misfire_grace_seconds", int, 300, 1),
        coalesce=setting("coalesce", bool, True),
        settings=spec.settings(**job_values),
    )


def _check_known_keys(values: dict[str, Any], path: str) -> None:
    known = {f.name for f in dataclasses.fields(Config)} - {"jobs", "config_file"}
    for key, value in values.items():
        if key == "jobs" and isinstance(value, dict):
            for job, table in value.items():
                if job not in JOBS or not isinstance(table, dict):
                    raise ConfigurationError(f"unknown job jobs.{job} in {path}")
                job_known = set(_JOB_COMMON) | {
                    f.name for f in dataclasses.fields(JOBS[job].settings)
                }
                for job_key in table:
                    if job_key not in job_known:
                        raise ConfigurationError(f"unknown setting jobs.{job}.{job_key} in {path}")
        elif key not in known:
            raise ConfigurationError(f"unknown setting {key} in {path}")
