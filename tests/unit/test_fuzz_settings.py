"""Property-based tests of the settings loader: any value of any ``SESSIONKEEPER_*`` variable
is either refused with a one-line ``ConfigurationError`` naming the variable, or accepted
within the bounds that everything downstream can handle (no raw Python error, and no value
that would make a later SQL statement fail: see tests/integration/test_fuzz_cli.py for the
daemon's start-up as a process)."""

from __future__ import annotations

from datetime import timedelta

from fuzz_strategies import examples
from hypothesis import given
from hypothesis import strategies as st

from sessionkeeper.daemon.config import Config, load_config
from sessionkeeper.jobs.registry import JOBS
from store.config import StoreConfig
from store.errors import ConfigurationError
from store.settings import CENTURY, SQL_INTEGER_MAX, setting_paths, variable

VARIABLES = sorted(
    {variable(path) for path in setting_paths(StoreConfig)}
    | {variable(path) for path in setting_paths(Config) if path[0] not in ("jobs", "store")}
    | {
        variable(("jobs", name, key))
        for name, spec in JOBS.items()
        for (key,) in setting_paths(spec.settings)
    }
    - {"SESSIONKEEPER_CONFIG_FILE"}
)
values = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(
        ["none", "-1", "0", "1e400", "nan", "inf", "1.5", "99999999999d", "36525d", "36526d"]
        + [str(n) for n in (2**31 - 1, 2**31, 2**63, 65535, 65536, 3_155_760_000, 10**4000)]
    ),
    st.tuples(st.integers(0, 10**12), st.sampled_from(["", "s", "m", "h", "d"])).map(
        lambda t: f"{t[0]}{t[1]}"
    ),
)


@examples(3)
@given(name=st.sampled_from(VARIABLES), value=values)
def test_every_variable_is_accepted_in_bounds_or_refused_in_one_line(name: str, value: str) -> None:
    try:
        config = load_config(env={name: value})
    except ConfigurationError as refused:
        message = str(refused)
        assert name in message and "\n" not in message, message
        return
    store = config.store
    for duration in (
        store.idle_timeout,
        store.link_code_ttl,
        store.link_failure_window,
        store.link_lockout,
    ):
        assert timedelta(0) <= duration <= CENTURY
    _, caps = store.rate_windows()
    assert all(1 <= cap <= SQL_INTEGER_MAX for cap in caps)
    assert 1 <= store.history_pairs <= 100_000 and 0 <= store.carry_over_pairs <= 100_000
    assert 0 <= config.metrics_port <= 65535
    assert config.statement_timeout_seconds * 1000 <= SQL_INTEGER_MAX
    for job in config.jobs.values():
        for number in vars(job.settings).values():
            if isinstance(number, int | float) and not isinstance(number, bool):
                assert 0 <= number <= CENTURY.total_seconds()
