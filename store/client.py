"""``Store`` (sync) and ``AsyncStore`` (asyncio): thin shells that own a psycopg pool and run
the core's plans. Every operation is declared once, in ``Operations``; an ``Op`` bound to a
``Store`` returns the result, bound to an ``AsyncStore`` it returns an awaitable."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from time import monotonic
from types import TracebackType
from typing import Any, Concatenate, Generic, NoReturn, ParamSpec, Self, TypeVar, overload

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from . import core, erasure, export, local_server, settings
from .config import StoreConfig
from .connection import refusal, scrub, secrets, secure_conninfo
from .errors import ConfigurationError, ConnectionRefused

P = ParamSpec("P")
T = TypeVar("T")
PlanFunction = Callable[Concatenate[StoreConfig, P], core.Plan[T]]


def build_conninfo(database_url: str | None, config: StoreConfig) -> str:
    """The libpq conninfo for the pool: TLS verified (see connection.py) and timeouts bounded,
    unless the URL itself sets them. Without a URL: the configured one (the settings loader),
    else the daemon's embedded server running on this machine."""
    url = database_url or settings.database_url() or local_server.discover_url()
    params = conninfo_to_dict(secure_conninfo(url))
    params.setdefault("connect_timeout", str(config.connect_timeout))
    params.setdefault("tcp_user_timeout", str(config.tcp_user_timeout_ms))
    if config.statement_timeout_ms is not None and "options" not in params:
        params["options"] = f"-c statement_timeout={config.statement_timeout_ms}"
    return make_conninfo("", **params)


def raise_store_error(exc: psycopg.Error, sent: core.Step | None = None) -> NoReturn:
    """Raise the store error ``exc`` stands for; ``sent``: the step whose statement failed."""
    translated = core.translate(exc, sent)
    scrub(exc)  # tracebacks and error trackers show the chain
    if translated is exc:
        raise exc
    raise translated from exc


def raise_connect_error(exc: psycopg.Error, conninfo: str) -> NoReturn:
    """Raise the store error for a failed connection attempt: a ``ConnectionRefused`` when the
    server refused it for good, else as ``raise_store_error``."""
    refused = refusal(exc, conninfo)
    if refused is None:
        raise_store_error(exc)
    scrub(exc, known=secrets(conninfo))
    raise refused from exc


class Backoff(AttemptWithBackoff):
    """psycopg_pool's reconnect back-off with the store's timing: the first retry after
    ``reconnect_delay``, then doubling up to ``reconnect_max_delay`` (psycopg_pool's own: 1 s,
    doubling without a cap)."""

    def __init__(self, config: StoreConfig, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.INITIAL_DELAY = config.reconnect_delay
        self.max_delay = config.reconnect_max_delay

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.max_delay)


class _Refusals:
    """A pool's memory of the last connection attempt the server refused for good (a wrong
    password, a missing database, a failed TLS handshake: ``connection.refusal``). Callers
    waiting for a connection get that error at once, and so do later calls until an attempt
    succeeds, instead of a ``PoolTimeout`` that hides the cause in the pool's log."""

    conninfo: Any
    refused: ConnectionRefused | None = None

    def _refused_by(self, exc: BaseException) -> ConnectionRefused | None:
        self.refused = refusal(exc, str(self.conninfo))
        return self.refused

    def raise_if_refused(self) -> None:
        """Raise the last refusal while no connection is ready (a fresh copy per caller)."""
        refused = self.refused
        if refused is not None and self._pool_available() == 0:
            raise type(refused)(str(refused))

    def _pool_available(self) -> int:
        stats: dict[str, int] = self.get_stats()  # type: ignore[attr-defined]
        return stats.get("pool_available", 0)


class _Pool(_Refusals, ConnectionPool[psycopg.Connection[DictRow]]):
    # Overrides psycopg_pool's (private) hooks where a reconnection starts, to set its timing,
    # and where a connection is made, to report a refusal at once.
    backoff: Callable[[float], AttemptWithBackoff]

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or self.backoff(self.reconnect_timeout), growing)

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[DictRow]:
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            if (refused := self._refused_by(exc)) is not None:
                with self._lock:
                    waiting = list(self._waiting)
                    self._waiting.clear()
                for client in waiting:
                    client.fail(type(refused)(str(refused)))
            raise
        self.refused = None
        return conn

    def reconnect_failed(self) -> None:
        # The pool gave a connection slot up: the next call starts an attempt of its own.
        self.refused = None
        super().reconnect_failed()


class _AsyncPool(_Refusals, AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]):
    backoff: Callable[[float], AttemptWithBackoff]

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        await super()._add_connection(attempt or self.backoff(self.reconnect_timeout), growing)

    async def _connect(self, timeout: float | None = None) -> psycopg.AsyncConnection[DictRow]:
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            if (refused := self._refused_by(exc)) is not None:
                async with self._lock:
                    waiting = list(self._waiting)
                    self._waiting.clear()
                for client in waiting:
                    await client.fail(type(refused)(str(refused)))
            raise
        self.refused = None
        return conn

    async def reconnect_failed(self) -> None:
        self.refused = None
        await super().reconnect_failed()


def _read_only(exc: psycopg.Error) -> bool:
    """The server refused a write as read-only: its connection is healthy but useless, so it is
    closed rather than returned to the pool."""
    return isinstance(exc, pg_errors.ReadOnlySqlTransaction)


# Each statement's column names, read from its first result. psycopg's dict_row decodes and
# hashes them anew from every result (15 for begin_turn); they are fixed by queries.sql.
_COLUMNS: dict[str, tuple[str, ...]] = {}


def _columns(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any], step: core.Step) -> Any:
    """The statement's column names, or None when it returned no rows (``cursor.description``
    would tell too, but it builds a ``Column`` per column on every call)."""
    result = cursor.pgresult
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return None
    names = _COLUMNS.get(step.name)
    if names is None or len(names) != result.nfields:
        names = _COLUMNS[step.name] = tuple(column.name for column in cursor.description or ())
    return names


@overload
def _cursor(conn: psycopg.Connection[Any], step: core.Step) -> psycopg.Cursor[Any]: ...
@overload
def _cursor(conn: psycopg.AsyncConnection[Any], step: core.Step) -> psycopg.AsyncCursor[Any]: ...
def _cursor(conn: Any, step: core.Step) -> Any:
    """The connection's cursor for a hot-path statement, made on its first use. A cursor keeps
    its adapters (the dumper of each parameter type, the loader of each column type) while it
    runs the same query again; a new cursor per call built them anew every time, a large share
    of a turn's client CPU (bench/RESULTS.md). Kept on the connection: they go with it.
    A kept cursor holds its last result until its next call, so other statements (whose
    results may be large: load_users_from_db's list) get a cursor of their own, freed with it.
    """
    if step.name not in _KEPT_CURSORS:
        return conn.cursor(row_factory=tuple_row)
    cursors: dict[str, Any] = conn.__dict__.setdefault("_sessionkeeper_cursors", {})
    cursor = cursors.get(step.name)
    if cursor is None or cursor.closed:
        cursor = cursors[step.name] = conn.cursor(row_factory=tuple_row)
    return cursor


_KEPT_CURSORS = frozenset({"begin_turn", "append_messages", "lg_put", "lg_put_writes"})


def _dicts(names: tuple[str, ...] | None, rows: list[tuple[Any, ...]]) -> core.Rows:
    return [] if names is None else [dict(zip(names, row, strict=True)) for row in rows]


def run_plan(
    conn: psycopg.Connection[DictRow],
    plan: core.Plan[T],
    after_error: Callable[[psycopg.Connection[DictRow], psycopg.Error], None] | None = None,
) -> T:
    """Run a plan's steps on one connection (a pool's, or a dedicated one). ``after_error``
    sees a failed statement's error first (the pool's failover handling); then the plan may
    handle it (``Runner.throw``), else it is raised as a ``StoreError``."""
    runner = core.Runner(plan)
    try:
        for step in runner:
            cursor = _cursor(conn, step)
            try:
                cursor.execute(step.sql, step.params, binary=True)
            except psycopg.Error as exc:
                if after_error is not None:
                    after_error(conn, exc)
                runner.throw(exc)  # raises again unless the plan handles it
                continue
            names = _columns(cursor, step)
            runner.feed(_dicts(names, cursor.fetchall() if names else []))
    except psycopg.Error as exc:
        raise_store_error(exc, runner.sent)
    return runner.result


async def run_plan_async(
    conn: psycopg.AsyncConnection[DictRow],
    plan: core.Plan[T],
    after_error: (
        Callable[[psycopg.AsyncConnection[DictRow], psycopg.Error], Awaitable[None]] | None
    ) = None,
) -> T:
    """``run_plan`` on an asyncio connection."""
    runner = core.Runner(plan)
    try:
        for step in runner:
            cursor = _cursor(conn, step)
            try:
                await cursor.execute(step.sql, step.params, binary=True)
            except psycopg.Error as exc:
                if after_error is not None:
                    await after_error(conn, exc)
                runner.throw(exc)
                continue
            names = _columns(cursor, step)
            runner.feed(_dicts(names, await cursor.fetchall() if names else []))
    except psycopg.Error as exc:
        raise_store_error(exc, runner.sent)
    return runner.result


class Op(Generic[P, T]):
    """One store operation: a core plan function, run by whichever store it is read from."""

    def __init__(self, plan: PlanFunction[P, T]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, store: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, store: Store, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, store: AsyncStore, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, store: _Shell | None, owner: type[Any]) -> Any:
        if store is None:
            return self
        bound = functools.update_wrapper(functools.partial(self.run_on, store), self.plan)
        # Kept on the instance (which then shadows this descriptor): building the wrapper on
        # every call cost time on the hot path (bench/RESULTS.md).
        store.__dict__[self.name] = bound
        return bound

    def run_on(self, store: _Shell, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        return store.execute(self.plan(store.config, *args, **kwargs))


class Operations:
    """Every operation, declared once for both shells (see store/core.py for each one)."""

    begin_turn = Op(core.begin_turn)
    finish_turn = Op(core.finish_turn)
    get_or_create_user = Op(core.get_or_create_user)
    find_user = Op(core.find_user)
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
    unlink = Op(core.unlink)
    forget_user = Op(erasure.forget_user)
    forget_person = Op(erasure.forget_person)
    forget_channel_user = Op(erasure.forget_channel_user)
    export_user = Op(export.export_user)
    export_person = Op(export.export_person)


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
            "reconnect_timeout": self.config.reconnect_timeout,
        }
        self._born: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._drained_at = 0.0
        if connection_class is not None:
            # Any psycopg connection subclass (the round-trip tests count with one).
            pool_options["connection_class"] = connection_class
        self._make_pool(pool_options)

    def _make_pool(self, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def _backoff(self, timeout: float) -> AttemptWithBackoff:
        return Backoff(self.config, timeout)

    def _connected(self, conn: Any) -> None:
        self._born[conn] = monotonic()

    def _must_drain(self, conn: Any, exc: psycopg.Error) -> bool:
        """After a statement failed on ``conn``: whether to drain the pool. A lost connection
        or a read-only server means a failover (or a misrouted URL), and every connection
        pooled before it points at the old node too: draining replaces them at once (libpq then
        picks the read-write host) instead of failing one call each. Once per failover: a
        connection older than the last drain is already being replaced."""
        if not (_read_only(exc) or conn.broken) or self._born.get(conn, 0.0) <= self._drained_at:
            return False
        self._drained_at = monotonic()
        return True

    def execute(self, plan: core.Plan[T]) -> Any:
        raise NotImplementedError

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters: pool_size, pool_available, requests_waiting, ..."""
        return self.pool.get_stats()


class Store(_Shell):
    """A synchronous store over a ``psycopg_pool.ConnectionPool``.

    ``Store(url, max_size=20)`` or ``Store(url, config=StoreConfig(...))``; the URL defaults to
    the configured one (``SESSIONKEEPER_DATABASE_URL``, ``DATABASE_URL``, the TOML file), else
    the embedded server running on this machine (docs/connecting.md). Connections open in the
    background; an operation waits at most ``pool_timeout`` for one, then raises
    ``DatabaseUnavailable``, or at once a ``ConnectionRefused`` when the server refused one.
    """

    pool: _Pool

    def _make_pool(self, options: dict[str, Any]) -> None:
        self.pool = pool = _Pool(configure=self._connected, **options)
        pool.backoff = self._backoff
        self.pool.open(wait=False)

    def _after_error(self, conn: psycopg.Connection[DictRow], exc: psycopg.Error) -> None:
        if self._must_drain(conn, exc):
            self.pool.drain()
        if _read_only(exc):
            conn.close()

    def execute(self, plan: core.Plan[T]) -> T:
        if self.pool.refused is not None:
            self.pool.raise_if_refused()
        try:
            conn = self.pool.getconn()
        except psycopg.Error as exc:  # no connection in time (PoolTimeout)
            raise_store_error(exc)
        # getconn/putconn rather than pool.connection(): that context manager also enters the
        # connection's own (a commit check, pointless in autocommit) and times the usage.
        try:
            return run_plan(conn, plan, self._after_error)
        finally:
            self.pool.putconn(conn)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStore(_Shell):
    """The asyncio twin of ``Store`` over an ``AsyncConnectionPool``; the pool opens on first
    use (or ``await store.open()`` / ``async with AsyncStore(...)``)."""

    pool: _AsyncPool

    def _make_pool(self, options: dict[str, Any]) -> None:
        self.pool = pool = _AsyncPool(configure=self._async_connected, **options)
        pool.backoff = self._backoff
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        async with self._open_lock:
            if not self._opened:
                await self.pool.open(wait=False)
                self._opened = True

    async def _async_connected(self, conn: Any) -> None:
        self._connected(conn)

    async def _after_error(
        self, conn: psycopg.AsyncConnection[DictRow], exc: psycopg.Error
    ) -> None:
        if self._must_drain(conn, exc):
            await self.pool.drain()
        if _read_only(exc):
            await conn.close()

    async def execute(self, plan: core.Plan[T]) -> T:
        if not self._opened:
            await self.open()
        if self.pool.refused is not None:
            self.pool.raise_if_refused()
        try:
            conn = await self.pool.getconn()
        except psycopg.Error as exc:  # no connection in time (PoolTimeout)
            raise_store_error(exc)
        try:
            return await run_plan_async(conn, plan, self._after_error)
        finally:
            await self.pool.putconn(conn)

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
