"""The seed's module-level API: functions acting on the default store ``init_database`` makes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

from .client import Op, Store
from .errors import ConfigurationError

P = ParamSpec("P")
T = TypeVar("T")

_default: Store | None = None


def init_database(database_url: str | None = None, **pool_options: Any) -> Store:
    """Create the default store (closing a previous one); options are ``StoreConfig`` fields."""
    global _default
    store = Store(database_url, **pool_options)
    previous, _default = _default, store
    if previous is not None:
        previous.close()
    return store


def default_store() -> Store:
    """The store ``init_database`` made (``ConfigurationError`` before it is called)."""
    if _default is None:
        raise ConfigurationError("the store is not initialised: call init_database() first")
    return _default


def close_database() -> None:
    """Close the default store's pool (at shutdown)."""
    global _default
    store, _default = _default, None
    if store is not None:
        store.close()


def get_pool() -> ConnectionPool[psycopg.Connection[DictRow]]:
    """The default store's connection pool (the seed's ``getPool()``)."""
    return default_store().pool


def pool_stats() -> dict[str, int]:
    """The default store's pool counters (``Store.pool_stats``), for metrics."""
    return default_store().pool_stats()


def _on_default(op: Op[P, T]) -> Callable[P, T]:
    @functools.wraps(op.plan)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        store = default_store()
        return store.execute(op.plan(store.config, *args, **kwargs))

    return call


# The seed's functions, then the additions, on the default store.
get_or_create_user = _on_default(Store.get_or_create_user)
get_or_create_session = _on_default(Store.get_or_create_session)
append_messages = _on_default(Store.append_messages)
trim_session_history = _on_default(Store.trim_session_history)
clear_session_history = _on_default(Store.clear_session_history)
check_rate_limit = _on_default(Store.check_rate_limit)
track_usage = _on_default(Store.track_usage)
register_proactive_user = _on_default(Store.register_proactive_user)
load_users_from_db = _on_default(Store.load_users_from_db)
get_history = _on_default(Store.get_history)
begin_turn = _on_default(Store.begin_turn)
finish_turn = _on_default(Store.finish_turn)
create_link_code = _on_default(Store.create_link_code)
redeem_link_code = _on_default(Store.redeem_link_code)
get_linked_users = _on_default(Store.get_linked_users)
find_user = _on_default(Store.find_user)
unlink = _on_default(Store.unlink)
forget_user = _on_default(Store.forget_user)
forget_person = _on_default(Store.forget_person)
forget_channel_user = _on_default(Store.forget_channel_user)
export_user = _on_default(Store.export_user)
export_person = _on_default(Store.export_person)
