"""Daemon configuration: ``SESSIONKEEPER_*`` environment variables over an optional TOML file.

Every setting has a default; a TOML file (``--config`` or ``SESSIONKEEPER_CONFIG``) overrides
the defaults and the environment overrides the file. Global settings are top-level keys of
the file and ``SESSIONKEEPER_<KEY>`` variables; job settings sit in ``[jobs.<job>]`` tables and
``SESSIONKEEPER_<JOB>_<KEY>`` variables. A bad value raises ``ConfigurationError`` naming the
setting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import JOB_NAMES
from jobs.registry import JOBS
from store.connection import redact
from store.errors import ConfigurationError

from .schedule import Schedule

PREFIX = "SESSIONKEEPER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
        enabled=setting("enabled", bool, True),
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
