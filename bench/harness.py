"""Measuring a workload: closed-loop workers, latency percentiles, WAL, client CPU, round trips.

A run has a warm-up and a measured window. Workers (threads, or asyncio tasks) loop until the
window closes; only operations that start inside the window are timed and counted. At the
window's edges the coordinator reads ``pg_current_wal_lsn()`` and this process's CPU time
(``time.process_time``: every thread, user and system), so that WAL and client CPU are divided
by the operations of the same window.

Round trips are counted on the wire, not inferred from code: ``RoundTripCounter`` is a small TCP
proxy in front of the server that counts each time the server starts answering after the client
has sent something. Pipelined statements sent together and answered together count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Window:
    """What one measured window saw."""

    ops: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    wal_bytes: int
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        ops = max(self.ops, 1)
        return {
            "ops": self.ops,
            "ops_per_s": round(self.per_second, 1),
            "p50_ms": round(percentile(self.latencies_ms, 50), 3),
            "p99_ms": round(percentile(self.latencies_ms, 99), 3),
            "wal_bytes_per_op": round(self.wal_bytes / ops),
            "client_cpu_ms_per_op": round(self.cpu_seconds * 1000 / ops, 3),
        }


class WalMeter:
    """Reads the server's WAL insert position over its own connection."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)

    def lsn(self) -> str:
        row = self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def since(self, start: str) -> int:
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)::bigint", (start,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


class _Clock:
    def __init__(self, warmup: float, duration: float) -> None:
        self.start = time.perf_counter() + warmup
        self.stop = self.start + duration


def run_threads(
    workers: int,
    operation: Callable[[int, int], object],
    *,
    warmup: float,
    duration: float,
    wal: WalMeter,
    setup: Callable[[int], object] | None = None,
) -> Window:
    """``operation(worker, i)`` in a loop on ``workers`` threads; measures the window."""
    latencies: list[list[float]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    ready = threading.Barrier(workers + 1)
    clock_box: list[_Clock] = []

    def work(worker: int) -> None:
        if setup is not None:
            setup(worker)
        ready.wait()
        clock = clock_box[0]
        mine = latencies[worker]
        i = 0
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= clock.stop:
                    return
                operation(worker, i)
                i += 1
                if t0 >= clock.start:
                    mine.append((time.perf_counter() - t0) * 1000)
        except BaseException as exc:  # reported by the coordinator
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    clock_box.append(_Clock(warmup, duration))
    ready.wait()
    window = _measure(clock_box[0], wal, time.sleep)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return _window(window, latencies, duration)


async def run_tasks(
    workers: int,
    operation: Callable[[int, int], Awaitable[object]],
    *,
    warmup: float,
    duration: float,
    wal: WalMeter,
) -> Window:
    """The asyncio twin of ``run_threads``: ``workers`` tasks on this event loop."""
    latencies: list[list[float]] = [[] for _ in range(workers)]
    clock = _Clock(warmup, duration)

    async def work(worker: int) -> None:
        mine = latencies[worker]
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= clock.stop:
                return
            await operation(worker, i)
            i += 1
            if t0 >= clock.start:
                mine.append((time.perf_counter() - t0) * 1000)

    tasks = [asyncio.create_task(work(w)) for w in range(workers)]
    await asyncio.sleep(max(0.0, clock.start - time.perf_counter()))
    lsn, cpu = wal.lsn(), time.process_time()
    await asyncio.sleep(max(0.0, clock.stop - time.perf_counter()))
    edges = (wal.since(lsn), time.process_time() - cpu)
    await asyncio.gather(*tasks)
    return _window(edges, latencies, duration)


def _measure(clock: _Clock, wal: WalMeter, sleep: Callable[[float], None]) -> tuple[int, float]:
    sleep(max(0.0, clock.start - time.perf_counter()))
    lsn, cpu = wal.lsn(), time.process_time()
    sleep(max(0.0, clock.stop - time.perf_counter()))
    return wal.since(lsn), time.process_time() - cpu


def _window(edges: tuple[int, float], latencies: list[list[float]], duration: float) -> Window:
    merged = [value for worker in latencies for value in worker]
    return Window(len(merged), duration, merged, edges[0], edges[1])


# -- round trips on the wire -------------------------------------------------------------------


class RoundTripCounter:
    """A TCP proxy to the server that counts client-to-server exchanges.

    Each connection's bytes are forwarded as they come; an exchange is counted when the server
    sends after the client has sent (request, then answer). ``conninfo(url)`` rewrites a URL to
    go through the proxy.
    """

    def __init__(self, target_url: str) -> None:
        params = conninfo_to_dict(target_url)
        host = str(params.get("host") or "/var/run/postgresql")
        port = int(params.get("port") or 5432)
        self._target: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.exchanges = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self, url: str) -> str:
        params = {**conninfo_to_dict(url), "host": "127.0.0.1", "port": str(self.port)}
        params["sslmode"] = "disable"
        return make_conninfo("", **params)

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[int]]:
        """Yields a one-element list that holds the exchanges counted inside the block."""
        box = [0]
        start = self.exchanges
        yield box
        box[0] = self.exchanges - start

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        client_spoke = False
        with client, server:
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        client_spoke = True
                    elif client_spoke:
                        client_spoke = False
                        with self._lock:
                            self.exchanges += 1
                    key.data.sendall(data)
