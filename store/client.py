"""``Store`` (sync) and ``AsyncStore`` (asyncio): thin shells that own a psycopg pool and run
the core's plans. Every operation is declared once, in ``Operations``; an ``Op`` bound to a
``Store`` returns the result, bound to an ``AsyncStore`` it returns an awaitable."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, Concatenate, Generic, NoReturn, ParamSpec, Self, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import core, erasure
from .config import StoreConfig
from .connection import configured_database_url, secure_conninfo
from .errors import ConfigurationError

P = ParamSpec("P")
T = TypeVar("T")
PlanFunction = Callable[Concatenate[StoreConfig, P], core.Plan[T]]


def build_conninfo(database_url: str | None, config: StoreConfig) -> str:
    """The libpq conninfo for the pool: TLS verified (see connection.py) and timeouts bounded,
    unless the URL itself sets them."""
    url = configured_database_url(database_url)
    if url is None:
        raise ConfigurationError(
            "no database URL: pass one or set SESSIONKEEPER_DATABASE_URL or DATABASE_URL"
        )
    params = conninfo_to_dict(secure_conninfo(url))
    params.setdefault("connect_timeout", str(config.connect_timeout))
    params.setdefault("tcp_user_timeout", str(config.tcp_user_timeout_ms))
    if config.statement_timeout_ms is not None and "options" not in params:
        params["options"] = f"-c statement_timeout={config.statement_timeout_ms}"
    return make_conninfo("", **params)


def raise_store_error(exc: psycopg.Error) -> NoReturn:
    translated = core.translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _has_rows(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows (``cursor.description`` would tell too, but it
    builds a ``Column`` per column on every call: 9 µs for begin_turn's 14 columns)."""
    result = cursor.pgresult
    return result is not None and result.status == pq.ExecStatus.TUPLES_OK


class Op(Generic[P, T]):
    """One store operation: a core plan function, run by whichever store it is read from."""

    def __init__(self, plan: PlanFunction[P, T]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, store: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, store: Store, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, store: AsyncStore, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, store: _Shell | None, owner: type[Any]) -> Any:
        if store is None:
            return self
        return functools.update_wrapper(functools.partial(self.run_on, store), self.plan)

    def run_on(self, store: _Shell, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        return store.execute(self.plan(store.config, *args, **kwargs))


class Operations:
    """Every operation, declared once for both shells (see store/core.py for each one)."""

    begin_turn = Op(core.begin_turn)
    finish_turn = Op(core.finish_turn)
    get_or_create_user = Op(core.get_or_create_user)
    get_or_create_session = Op(core.get_or_create_session)
    append_messages = Op(core.append_messages)
    trim_session_history = Op(core.trim_session_history)
    clear_session_history = Op(core.clear_session_history)
    get_history = Op(core.get_history)
    check_rate_limit = Op(core.check_rate_limit)
    track_usage = Op(core.track_usage)
    register_proactive_user = Op(core.register_proactive_user)
    load_users_from_db = Op(core.load_users_from_db)
    create_link_code = Op(core.create_link_code)
    redeem_link_code = Op(core.redeem_link_code)
    get_linked_users = Op(core.get_linked_users)
    forget_user = Op(erasure.forget_user)
    forget_person = Op(erasure.forget_person)


class _Shell(Operations):
    """What both stores share: settings, the pool's options and its statistics."""

    config: StoreConfig
    pool: (
        ConnectionPool[psycopg.Connection[DictRow]]
        | AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]
    )

    def __init__(
        self,
        database_url: str | None = None,
        *,
        config: StoreConfig | None = None,
        connection_class: type[Any] | None = None,
        **options: Any,
    ) -> None:
        try:
            self.config = replace(config or StoreConfig.from_env(), **options)
        except TypeError as exc:
            raise ConfigurationError(f"unknown store setting: {exc}") from None
        pool_options: dict[str, Any] = {
            "conninfo": build_conninfo(database_url, self.config),
            "kwargs": {
                "autocommit": True,  # one statement = one transaction = one round trip
                "prepare_threshold": self.config.prepare_threshold,
                "row_factory": dict_row,
            },
            "min_size": self.config.min_size,
            "max_size": self.config.max_size,
            "max_idle": self.config.max_idle,
            "timeout": self.config.pool_timeout,
            "name": f"sessionkeeper-{type(self).__name__}",
            "open": False,
        }
        if connection_class is not None:
            # Any psycopg connection subclass (the round-trip tests count with one).
            pool_options["connection_class"] = connection_class
        self._make_pool(pool_options)

    def _make_pool(self, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def execute(self, plan: core.Plan[T]) -> Any:
        raise NotImplementedError

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters: pool_size, pool_available, requests_waiting, ..."""
        return self.pool.get_stats()


class Store(_Shell):
    """A synchronous store over a ``psycopg_pool.ConnectionPool``.

    ``Store(url, max_size=20)`` or ``Store(url, config=StoreConfig(...))``; the URL defaults to
    ``SESSIONKEEPER_DATABASE_URL`` / ``DATABASE_URL``. Connections open in the background; an
    operation waits at most ``pool_timeout`` for one, then raises ``DatabaseUnavailable``.
    """

    pool: ConnectionPool[psycopg.Connection[DictRow]]

    def _make_pool(self, options: dict[str, Any]) -> None:
        self.pool = ConnectionPool(**options)
        self.pool.open(wait=False)

    def execute(self, plan: core.Plan[T]) -> T:
        runner = core.Runner(plan)
        try:
            with self.pool.connection() as conn, conn.cursor() as cursor:
                for step in runner:
                    cursor.execute(step.sql, step.params)
                    runner.feed(cursor.fetchall() if _has_rows(cursor) else [])
        except psycopg.Error as exc:
            raise_store_error(exc)
        return runner.result

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStore(_Shell):
    """The asyncio twin of ``Store`` over an ``AsyncConnectionPool``; the pool opens on first
    use (or ``await store.open()`` / ``async with AsyncStore(...)``)."""

    pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

    def _make_pool(self, options: dict[str, Any]) -> None:
        self.pool = AsyncConnectionPool(**options)
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._open_lock:
            if not self._opened:
                await self.pool.open(wait=False)
                self._opened = True

    async def execute(self, plan: core.Plan[T]) -> T:
        runner = core.Runner(plan)
        if not self._opened:
            await self.open()
        try:
            async with self.pool.connection() as conn, conn.cursor() as cursor:
                for step in runner:
                    await cursor.execute(step.sql, step.params)
                    runner.feed(await cursor.fetchall() if _has_rows(cursor) else [])
        except psycopg.Error as exc:
            raise_store_error(exc)
        return runner.result

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
