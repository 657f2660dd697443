"""The proactive list, kept in a bot's memory and current without polling.

The daemon's proactive_reload job publishes the list (``proactive_user_list``) and, when it
changed, raises its version and sends ``NOTIFY sessionkeeper_proactive_list, '<version>'``
(``sk_publish_proactive_list`` in store/sql/functions.sql; erasure does the same). A
``ProactiveUsers`` (threads) or ``AsyncProactiveUsers`` (asyncio) holds one dedicated connection
outside the pool that LISTENs on that channel: it loads the list when it connects, reloads when
a notification names a newer version, and after losing the connection reconnects with
back-off and reloads (a notification sent meanwhile is lost, the reload makes up for it).

Both twins share the statement (``core.proactive_snapshot``), the decisions and the reading
side; they differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

from . import core
from .client import (
    build_conninfo,
    raise_connect_error,
    run_plan,
    run_plan_async,
)
from .config import StoreConfig
from .connection import describe, redact
from .errors import ConfigurationError
from .models import ProactiveList, ProactiveUser

log = logging.getLogger(__name__)

# The channel sk_publish_proactive_list notifies on (store/sql/functions.sql says it too).
NOTIFY_CHANNEL = "sessionkeeper_proactive_list"
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"
# Reconnection back-off: first wait, ceiling (seconds); each wait is jittered so that many
# bots do not reconnect in step after a database restart.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# TCP keepalives on the listening connection, which otherwise sits idle: a peer that vanished
# without closing the connection is noticed within about a minute instead of never.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def backoff_delays() -> Iterator[float]:
    """The waits before successive reconnection attempts: doubling, capped, jittered."""
    delay = BACKOFF_FIRST
    while True:
        yield delay * random.uniform(0.5, 1.0)  # jitter, not secrecy
        delay = min(delay * 2, BACKOFF_MAX)


def listen_conninfo(database_url: str | None, config: StoreConfig) -> str:
    """The store's conninfo with keepalives, named so that operators can tell the listening
    connection apart in pg_stat_activity."""
    params = conninfo_to_dict(build_conninfo(database_url, config))
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    if params.get("application_name") == "sessionkeeper":
        params["application_name"] = "sessionkeeper-proactive"
    return make_conninfo("", **params)


def newer(payload: str, version: int) -> bool:
    """Whether a notification's payload announces a version newer than ``version`` (an
    unreadable payload counts as newer: reloading is always safe)."""
    try:
        return int(payload) > version
    except ValueError:
        return True


class _ProactiveView:
    """What both twins share: settings, the current list and reading it."""

    def __init__(
        self, database_url: str | None = None, *, config: StoreConfig | None = None, **options: Any
    ) -> None:
        try:
            self.config = replace(config or StoreConfig.from_env(), **options)
        except TypeError as exc:
            raise ConfigurationError(f"unknown store setting: {exc}") from None
        self._conninfo = listen_conninfo(database_url, self.config)
        # One reference, swapped whole: readers in other threads never see half an update.
        self._current: tuple[ProactiveList, dict[UUID, ProactiveUser]] = (ProactiveList(-1), {})

    def _accept(self, snapshot: ProactiveList) -> None:
        self._current = (snapshot, {user.user_id: user for user in snapshot.users})

    def _lost(self, exc: BaseException) -> None:
        log.warning(
            "proactive list: lost the connection to %s (%s); reconnecting",
            describe(self._conninfo),
            redact(str(exc).strip() or type(exc).__name__),
        )

    @property
    def version(self) -> int:
        """The version of the list held (0: loaded from the users tables, never published;
        -1: nothing loaded yet)."""
        return self._current[0].version

    def snapshot(self) -> ProactiveList:
        """The list held now, with its version; it does not change under the caller."""
        return self._current[0]

    def chat_id(self, user_id: UUID | str) -> str | None:
        """The chat to message ``user_id`` in, or None when the user is not on the list."""
        user = self._current[1].get(UUID(str(user_id)))
        return user.chat_id if user else None

    def __contains__(self, user: object) -> bool:
        """``user_id in users`` (a UUID, its text, or a ``ProactiveUser``)."""
        if isinstance(user, ProactiveUser):
            return self._current[1].get(user.user_id) == user
        try:
            return UUID(str(user)) in self._current[1]
        except ValueError:
            return False

    def __iter__(self) -> Iterator[ProactiveUser]:
        return iter(self._current[0].users)

    def __len__(self) -> int:
        return len(self._current[0].users)


class ProactiveUsers(_ProactiveView):
    """The proactive list in memory, kept current by a background thread.

    ``ProactiveUsers(url)`` connects, listens and loads the list before it returns (a
    ``StoreError`` if it cannot); then ``for user in users``, ``user_id in users``,
    ``users.chat_id(user_id)`` and ``users.snapshot()`` read what is held. ``close()`` (or a
    ``with`` block) stops the thread and closes the connection.
    """

    def __init__(
        self, database_url: str | None = None, *, config: StoreConfig | None = None, **options: Any
    ) -> None:
        super().__init__(database_url, config=config, **options)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._conn: psycopg.Connection[DictRow] | None = self._connect()
        self._thread = threading.Thread(
            target=self._listen, name="sessionkeeper-proactive", daemon=True
        )
        self._thread.start()

    def _connect(self) -> psycopg.Connection[DictRow]:
        try:
            conn = psycopg.Connection.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise_connect_error(exc, self._conninfo)
        try:
            conn.execute(LISTEN)  # before loading: nothing published after the load is missed
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self, conn: psycopg.Connection[DictRow]) -> None:
        self._accept(run_plan(conn, core.proactive_snapshot(self.config)))
        with self._changed:
            self._changed.notify_all()

    def _listen(self) -> None:
        delays: Iterator[float] | None = None
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    delays = None
                    log.info("proactive list: reconnected (version %d)", self.version)
                self._serve(self._conn)
            except Exception as exc:  # any failure: reconnect, the thread must not die
                self._lost(exc)
                self._drop_connection()
                delays = delays or backoff_delays()
                self._stop.wait(next(delays))

    def _serve(self, conn: psycopg.Connection[DictRow]) -> None:
        """Reload on every notification of a newer version until ``close()`` wakes us."""
        while not self._stop.is_set():
            # Notifications that arrived during the last load wait in psycopg's backlog, not
            # on the socket: drain first, then sleep on the socket.
            with contextlib.closing(conn.notifies(timeout=0)) as arrived:
                payloads = [notify.payload for notify in arrived]
            if any(newer(payload, self.version) for payload in payloads):
                self._load(conn)
                continue
            wake = self._wake_reader.fileno()
            readable, _, _ = select.select([conn.fileno(), wake], [], [])
            if wake in readable:
                return

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the list held is at least ``version``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.version >= version, timeout)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake_writer.send(b"x")
        self._thread.join()
        self._drop_connection()
        self._wake_reader.close()
        self._wake_writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncProactiveUsers(_ProactiveView):
    """The asyncio twin of ``ProactiveUsers``: ``await users.open()`` (or ``async with``)
    connects, listens and loads; a task keeps the list current until ``await users.close()``.
    """

    def __init__(
        self, database_url: str | None = None, *, config: StoreConfig | None = None, **options: Any
    ) -> None:
        super().__init__(database_url, config=config, **options)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._task is None:
            conn = await self._connect()
            self._task = asyncio.create_task(self._listen(conn), name="sessionkeeper-proactive")

    async def _connect(self) -> psycopg.AsyncConnection[DictRow]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, row_factory=dict_row
            )
        except psycopg.Error as exc:
            raise_connect_error(exc, self._conninfo)
        try:
            await conn.execute(LISTEN)  # before loading: nothing published after it is missed
            await self._load(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _load(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        self._accept(await run_plan_async(conn, core.proactive_snapshot(self.config)))
        async with self._changed:
            self._changed.notify_all()

    async def _listen(self, first: psycopg.AsyncConnection[DictRow]) -> None:
        conn: psycopg.AsyncConnection[DictRow] | None = first
        delays: Iterator[float] | None = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._connect()
                        delays = None
                        log.info("proactive list: reconnected (version %d)", self.version)
                    await self._until_newer(conn)
                    await self._load(conn)
                except Exception as exc:  # any failure: reconnect, the task must not die
                    self._lost(exc)
                    if conn is not None:
                        await conn.close()
                        conn = None
                    delays = delays or backoff_delays()
                    await asyncio.sleep(next(delays))
        finally:
            if conn is not None:
                await conn.close()

    async def _until_newer(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        # Closed at once on leaving (aclosing): the generator holds the connection's lock.
        async with contextlib.aclosing(conn.notifies()) as arrived:
            async for notify in arrived:
                if newer(notify.payload, self.version):
                    return

    async def wait_for_version(self, version: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the list held is at least ``version``."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version >= version), timeout
                )
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
