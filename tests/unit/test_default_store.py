"""The module-level API (the seed's shape): one function per operation, on the default store."""

from __future__ import annotations

import pytest

import store
from store.client import Operations


def test_every_operation_has_a_module_level_function() -> None:
    operations = {name for name in vars(Operations) if not name.startswith("_")}
    for name in operations:
        function = getattr(store, name)
        assert name in store.__all__ and function.__doc__ == getattr(Operations, name).__doc__


@pytest.mark.parametrize(
    "call",
    [
        store.default_store,
        store.get_pool,
        store.pool_stats,
        lambda: store.get_or_create_user("telegram", "1"),
        lambda: store.begin_turn("telegram", "1"),
    ],
)
def test_before_init_database_the_calls_say_what_to_do(call: object) -> None:
    store.close_database()  # no default store, whatever ran before
    assert callable(call)
    with pytest.raises(store.ConfigurationError, match=r"call init_database\(\) first"):
        call()
