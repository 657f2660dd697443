"""The one settings loader (store/settings.py): precedence, every type's parsing, one-line errors.

No database: the loader only reads the environment (a dict here) and a TOML file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sessionkeeper.daemon.config import SCHEDULING_KEYS, Config
from sessionkeeper.jobs.registry import JOBS
from store import StoreConfig
from store.errors import ConfigurationError
from store.settings import Source, load, variable


@dataclass(frozen=True)
class Sample:
    """One field of every type the loader reads."""

    flag: bool = False
    count: int = 1
    ratio: float = 0.5
    name: str = "x"
    span: timedelta = timedelta(seconds=1)
    names: frozenset[str] | None = None
    cap: int | None = 5
    window: timedelta | None = None


def sample(env: Mapping[str, str] | None = None, toml: str | None = None, **kw: Any) -> Sample:
    path = None
    if toml is not None:
        path = kw.pop("tmp_path") / "settings.toml"
        path.write_text(toml)
    return load(Sample, Source(env or {}, path), **kw)


def refusal(env: Mapping[str, str] | None = None, toml: str | None = None, **kw: Any) -> str:
    with pytest.raises(ConfigurationError) as error:
        sample(env, toml, **kw)
    message = str(error.value)
    assert "\n" not in message
    return message


# -- precedence --------------------------------------------------------------------------------


def test_environment_over_file_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sk.toml"
    path.write_text("max_size = 7\nhistory_pairs = 8\n")
    env = {"SESSIONKEEPER_MAX_SIZE": "9"}
    config = StoreConfig.from_env(env, config_file=path)
    assert (config.max_size, config.history_pairs, config.min_size) == (9, 8, 1)
    # The file may come from SESSIONKEEPER_CONFIG; keyword overrides win over everything.
    from_variable = StoreConfig.from_env({**env, "SESSIONKEEPER_CONFIG": str(path)}, max_size=4)
    assert (from_variable.max_size, from_variable.history_pairs) == (4, 8)
    assert StoreConfig.from_env({}) == StoreConfig()


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    assert sample({"SESSIONKEEPER_COUNT": "  "}, "count = 3\n", tmp_path=tmp_path).count == 3


def test_job_tables_map_to_variables_without_the_group_name(tmp_path: Path) -> None:
    assert variable(("jobs", "usage_rollup", "batch_size")) == (
        "SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE"
    )
    path = tmp_path / "sk.toml"
    path.write_text("[jobs.usage_rollup]\ncount = 4\n")
    source = Source({}, path)
    assert load(Sample, source, table=("jobs", "usage_rollup")).count == 4
    found = source.find("jobs", "usage_rollup", "count")
    assert found is not None and found.where == f"jobs.usage_rollup.count in {path}"
    env = {"SESSIONKEEPER_USAGE_ROLLUP_COUNT": "6"}
    assert load(Sample, Source(env, path), table=("jobs", "usage_rollup")).count == 6


def test_the_store_reads_a_file_shared_with_the_daemon(tmp_path: Path) -> None:
    """Bots and the daemon may share one file: the store reads its keys and leaves the rest."""
    path = tmp_path / "sk.toml"
    path.write_text('workers = 3\nrate_per_day = 100\n[jobs.usage_rollup]\nschedule = "1h"\n')
    assert StoreConfig.from_env({}, config_file=path).rate_per_day == 100


def test_no_two_settings_share_a_variable() -> None:
    names: dict[str, str] = {}

    def add(variable_name: str, owner: str) -> None:
        assert variable_name not in names, (variable_name, owner, names.get(variable_name))
        names[variable_name] = owner

    for field in dataclasses.fields(StoreConfig):
        add(variable((field.name,)), "store")
    for field in dataclasses.fields(Config):
        if field.name not in ("jobs", "store", "config_file"):
            add(variable((field.name,)), "daemon")
    for name, spec in JOBS.items():
        keys = [*SCHEDULING_KEYS, *(f.name for f in dataclasses.fields(spec.settings))]
        for key in keys:
            add(variable(("jobs", name, key)), name)


# -- values by type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *(("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True)),
        *(("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False)),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert sample({"SESSIONKEEPER_FLAG": text}).flag is value


@pytest.mark.parametrize("text", ["flase", "2", "y", "enabled", "none"])
def test_a_bad_boolean_is_refused_naming_the_accepted_words(text: str) -> None:
    message = refusal({"SESSIONKEEPER_FLAG": text})
    assert message == (
        f"invalid setting SESSIONKEEPER_FLAG: {text!r} is not a boolean"
        " (true/false, 1/0, yes/no, on/off)"
    )


def test_toml_values_have_their_own_types(tmp_path: Path) -> None:
    toml = (
        "flag = true\ncount = 12\nratio = 2\nname = ' y '\nspan = 600\n"
        "names = ['a', 'b']\ncap = 'none'\nwindow = '1h'\n"
    )
    assert sample(toml=toml, tmp_path=tmp_path) == Sample(
        flag=True,
        count=12,
        ratio=2.0,
        name="y",
        span=timedelta(minutes=10),
        names=frozenset({"a", "b"}),
        cap=None,
        window=timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("count", " 42 ", 42),
        ("count", "-3", -3),
        ("ratio", "0.05", 0.05),
        ("ratio", "3", 3.0),
        ("name", "  spaced ", "spaced"),
        ("names", "telegram, whatsapp,,", frozenset({"telegram", "whatsapp"})),
        ("cap", "none", None),
        ("cap", "NONE", None),
        ("cap", "7", 7),
        ("names", "None", None),
    ],
)
def test_numbers_strings_lists_and_none(key: str, text: str, value: object) -> None:
    assert getattr(sample({f"SESSIONKEEPER_{key.upper()}": text}), key) == value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *(("90", 90), ("1.5", 1.5), ("90s", 90), ("10m", 600), ("1h", 3600)),
        *(("2d", 172800), ("0", 0), (" 5 M ", 300)),
    ],
)
def test_durations_are_seconds_or_a_number_with_a_unit(text: str, seconds: float) -> None:
    assert sample({"SESSIONKEEPER_SPAN": text}).span == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("key", "text", "accepted"),
    [
        ("count", "1.5", "a whole number"),
        ("count", "12abc", "a whole number"),
        ("count", "none", "a whole number"),  # not optional: none is no way out
        ("ratio", "nan", "a number"),
        ("ratio", "inf", "a number"),
        ("ratio", "1s", "a number"),
        ("span", "-5", "a duration (seconds, or a number with s, m, h or d, e.g. 90, 10m)"),
        ("span", "ten", "a duration"),
        ("span", "1w", "a duration"),
        ("span", "5 min", "a duration"),
        ("cap", "many", "a whole number, or none"),
        (
            "window",
            "soon",
            "a duration (seconds, or a number with s, m, h or d, e.g. 90, 10m), or none",
        ),
        ("names", ",", "a list of names"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_form(
    key: str, text: str, accepted: str
) -> None:
    message = refusal({f"SESSIONKEEPER_{key.upper()}": text})
    assert message.startswith(f"invalid setting SESSIONKEEPER_{key.upper()}: {text!r} is not ")
    assert accepted in message


@pytest.mark.parametrize(
    ("toml", "accepted"),
    [
        ("count = true\n", "a whole number"),
        ("count = 1.5\n", "a whole number"),
        ("ratio = false\n", "a number"),
        ("span = true\n", "a duration"),
        ("name = 5\n", "a non-empty string"),
        ("name = ''\n", "a non-empty string"),
        ("names = [1, 2]\n", "a list of names"),
        ("flag = 'maybe'\n", "a boolean"),
    ],
)
def test_a_bad_file_value_is_named_by_key_and_file(
    tmp_path: Path, toml: str, accepted: str
) -> None:
    message = refusal(toml=toml, tmp_path=tmp_path)
    key = toml.split(" ", 1)[0]
    assert message.startswith(f"invalid setting {key} in {tmp_path / 'settings.toml'}: ")
    assert accepted in message


def test_range_checks_name_where_the_value_came_from(tmp_path: Path) -> None:
    """The dataclass checks ranges; the loader names the variable or key that set the value."""
    with pytest.raises(ConfigurationError) as by_env:
        StoreConfig.from_env({"SESSIONKEEPER_MAX_SIZE": "0"})
    assert str(by_env.value) == (
        "invalid setting SESSIONKEEPER_MAX_SIZE: '0' is not a whole number from 1 to 10000"
    )
    path = tmp_path / "sk.toml"
    path.write_text("rate_per_hour = 0\n")
    with pytest.raises(ConfigurationError) as by_file:
        StoreConfig.from_env({}, config_file=path)
    assert str(by_file.value) == (
        f"invalid setting rate_per_hour in {path}: 0 is not a whole number"
        " from 1 to 2147483647, or none"
    )
    with pytest.raises(ConfigurationError) as by_keyword:
        StoreConfig(idle_timeout=timedelta(0))
    assert str(by_keyword.value).startswith("invalid setting idle_timeout: ")
    with pytest.raises(ConfigurationError, match="unknown setting"):
        StoreConfig.from_env({}, max_sise=3)


def test_a_password_never_appears_in_an_error() -> None:
    message = refusal({"SESSIONKEEPER_COUNT": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in message and "SESSIONKEEPER_COUNT" in message


@pytest.mark.parametrize(
    ("content", "named"),
    [(None, "cannot read configuration file"), ("count = [\n", "invalid configuration file")],
)
def test_an_unreadable_file_is_one_line(tmp_path: Path, content: str | None, named: str) -> None:
    path = tmp_path / "sk.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError) as error:
        Source({"SESSIONKEEPER_CONFIG": str(path)})
    assert named in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


# -- deprecated names --------------------------------------------------------------------------


def test_an_old_name_still_works_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = {"count": [("jobs", "legacy_job", "old_count")]}
    env = {"SESSIONKEEPER_LEGACY_JOB_OLD_COUNT": "8"}
    with caplog.at_level(logging.WARNING, logger="sessionkeeper.settings"):
        assert load(Sample, Source(env), deprecated=old).count == 8
    assert caplog.messages == [
        "SESSIONKEEPER_LEGACY_JOB_OLD_COUNT is deprecated: set SESSIONKEEPER_COUNT (count) instead"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sessionkeeper.settings"):
        both = {**env, "SESSIONKEEPER_COUNT": "2"}
        assert load(Sample, Source(both), deprecated=old).count == 2
    assert "deprecated and ignored" in caplog.messages[0]
