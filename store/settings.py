"""The one settings loader: ``SESSIONKEEPER_*`` environment variables over a TOML file over
the defaults. It builds the store's ``StoreConfig`` and the daemon's configuration alike, so
every setting is read by the same rules and every bad value is refused the same way: a one-line
``ConfigurationError`` naming the variable or key and the accepted form.

Names: the top-level key ``max_size`` of the file is the variable ``SESSIONKEEPER_MAX_SIZE``;
the key ``batch_size`` of a ``[jobs.usage_rollup]`` table is
``SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE`` (a group table such as ``jobs`` is not part of the
variable's name). The file is ``--config`` or ``SESSIONKEEPER_CONFIG``. An empty variable
counts as unset.

Values, by the type the dataclass declares: booleans are true/false, 1/0, yes/no, on/off (any
case); durations (``timedelta``) are seconds or a number with a unit (``90s``, ``10m``, ``1h``,
``1d``); lists are comma-separated (or a TOML array); ``none`` turns an optional setting off.
Range checks live in the dataclasses (``__post_init__`` raising ``SettingError`` with the field's
name), so keyword arguments are checked by the same rules; the loader only renames the setting
to where the value came from.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from .connection import redact
from .errors import ConfigurationError

PREFIX = "SESSIONKEEPER_"
FILE_VARIABLE = PREFIX + "CONFIG"
# Tables that group other tables: ``[jobs.<job>]`` is SESSIONKEEPER_<JOB>_<KEY>, without JOBS_.
GROUPS = frozenset({"jobs"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# Upper bounds every loader shares: a setting the store or a job adds to (or subtracts from) a
# time is at most a century, which keeps the result within what PostgreSQL and Python hold
# (the store accepts times up to year 9000); a count sent as an SQL integer fits one.
CENTURY = timedelta(days=36525)
CENTURY_SECONDS = int(CENTURY.total_seconds())
SQL_INTEGER_MAX = 2**31 - 1

log = logging.getLogger("sessionkeeper.settings")
T = TypeVar("T")
KeyPath = tuple[str, ...]


class SettingError(ConfigurationError):
    """A setting's value is refused. The message names the setting and the accepted form."""

    def __init__(self, setting: str, value: object, expected: str) -> None:
        self.setting = setting
        self.value = value
        self.expected = expected
        shown = repr(redact(value)) if isinstance(value, str) else redact(repr(value))
        super().__init__(f"invalid setting {setting}: {shown} is not {expected}")

    def at(self, where: str, value: object) -> SettingError:
        """The same refusal, naming where the value came from."""
        return SettingError(where, value, self.expected)


def require(condition: bool, setting: str, value: object, expected: str) -> None:
    """Refuse ``value`` of ``setting`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise SettingError(setting, value, expected)


@dataclass(frozen=True)
class Found:
    value: object  # a string from the environment, or a TOML value
    where: str  # SESSIONKEEPER_MAX_SIZE, or "max_size in /etc/sessionkeeper.toml"


def variable(path: KeyPath) -> str:
    """The environment variable of the setting at ``path`` (``("jobs", job, key)``, ``(key,)``)."""
    return PREFIX + "_".join(part for part in path if part not in GROUPS).upper()


class Source:
    """Where settings come from: the environment first, then the TOML file."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.path = str(config_file) if config_file else self.environ_value(FILE_VARIABLE)
        self.file: dict[str, Any] = _read_toml(self.path) if self.path else {}

    def environ_value(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def find(self, *path: str) -> Found | None:
        name = variable(path)
        value = self.environ_value(name)
        if value is not None:
            return Found(value, name)
        table: Any = self.file
        for part in path[:-1]:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict) and path[-1] in table:
            return Found(table[path[-1]], f"{'.'.join(path)} in {self.path}")
        return None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:  # also a binary file given by mistake
        raise ConfigurationError(f"cannot read configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"invalid configuration file {path}: {exc}") from None


# -- values ------------------------------------------------------------------------------------


def parse(found: Found, kind: Any) -> Any:
    """``found``'s value as a ``kind`` (a type hint: bool, int, float, str, timedelta,
    frozenset[str], or one of them ``| None``); a ``SettingError`` naming ``found.where`` else."""
    base, optional = _unwrap_optional(kind)
    value = found.value
    if optional and isinstance(value, str) and value.strip().lower() == "none":
        return None
    parser, expected = _PARSERS[base]
    try:
        return parser(value)
    except (TypeError, ValueError, OverflowError):
        suffix = ", or none" if optional else ""
        raise SettingError(found.where, value, expected + suffix) from None


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = (arg for arg in args if arg is not type(None))
        return inner, True
    return kind, False


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(text)
    return text in _TRUE


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    return int(value)


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _str(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(value)
    return value.strip()


def _duration(value: object) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().lower())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ValueError(value)
    if not math.isfinite(seconds):
        raise ValueError(value)
    return timedelta(seconds=seconds)


def _names(value: object) -> frozenset[str]:
    if isinstance(value, str):
        parts: Sequence[object] = value.split(",")
    elif isinstance(value, list):
        parts = value
    else:
        raise TypeError(value)
    if not all(isinstance(part, str) for part in parts):
        raise TypeError(value)
    names = frozenset(str(part).strip() for part in parts) - {""}
    if not names:
        raise ValueError(value)
    return names


_PARSERS: dict[Any, tuple[Any, str]] = {
    bool: (_bool, "a boolean (true/false, 1/0, yes/no, on/off)"),
    int: (_int, "a whole number"),
    float: (_float, "a number"),
    str: (_str, "a non-empty string"),
    timedelta: (_duration, "a duration (seconds, or a number with s, m, h or d, e.g. 90, 10m)"),
    frozenset[str]: (_names, "a list of names (comma-separated, or a TOML array of strings)"),
}


# -- dataclasses -------------------------------------------------------------------------------


def load(
    cls: type[T],
    source: Source,
    *,
    table: KeyPath = (),
    deprecated: Mapping[str, Sequence[KeyPath]] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> T:
    """An instance of dataclass ``cls`` with every field found in ``source`` (under ``table``),
    then ``overrides`` (fields given there are not looked up), else the field's default.

    ``deprecated`` maps a field to the paths it had before; a value found only there is used,
    and either way the old name is reported in the log (expand/contract of configuration).
    """
    overrides = overrides or {}
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    found_at: dict[str, Found] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides or not field.init:
            continue
        found = source.find(*table, field.name)
        for old in (deprecated or {}).get(field.name, ()):
            old_found = source.find(*old)
            if old_found is None:
                continue
            new_name = f"{variable((*table, field.name))} ({'.'.join((*table, field.name))})"
            if found is None:
                log.warning("%s is deprecated: set %s instead", old_found.where, new_name)
                found = old_found
            else:
                log.warning("%s is deprecated and ignored: %s is set", old_found.where, new_name)
        if found is not None:
            values[field.name] = parse(found, hints[field.name])
            found_at[field.name] = found
    values.update(overrides)
    try:
        return cls(**values)
    except SettingError as exc:
        origin = found_at.get(exc.setting)
        if origin is None:
            raise
        raise exc.at(origin.where, origin.value) from None
    except TypeError as exc:  # an override that is no field of cls
        raise ConfigurationError(f"unknown setting: {exc}") from None


def database_url(source: Source | None = None) -> str | None:
    """The database URL, read here and nowhere else: ``SESSIONKEEPER_DATABASE_URL``, else
    ``DATABASE_URL`` (the common convention), else the file's top-level ``database_url``. None
    when none is set: the daemon then runs its embedded server, and a bot looks for it
    (``store.local_server``)."""
    source = Source() if source is None else source
    name = variable(("database_url",))
    value = source.environ_value(name) or source.environ_value("DATABASE_URL")
    if value is not None:
        return value
    found = source.find("database_url")
    return None if found is None else str(parse(found, str))


def setting_paths(cls: type[Any], table: KeyPath = ()) -> list[KeyPath]:
    """The path of every field of dataclass ``cls`` (for checks of a file's keys)."""
    return [(*table, field.name) for field in dataclasses.fields(cls) if field.init]
