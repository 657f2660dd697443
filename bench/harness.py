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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]
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
    client_cpu_seconds: float
    server: ServerDelta

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ops = max(self.ops, 1)
        server_cpu = self.server.cpu_seconds
        own = self.client_cpu_seconds + (server_cpu or 0.0)
        return {
            "ops": self.ops,
            "ops_per_s": round(self.per_second, 1),
            "p50_ms": round(percentile(self.latencies_ms, 50), 3),
            "p99_ms": round(percentile(self.latencies_ms, 99), 3),
            "wal_bytes_per_op": round(self.server.wal_bytes / ops),
            "client_cpu_ms_per_op": round(self.client_cpu_seconds * 1000 / ops, 3),
            "server_cpu_ms_per_op": (
                round(server_cpu * 1000 / ops, 3) if server_cpu is not None else None
            ),
            "busy_cpus": round(own / self.seconds, 2),
            # CPUs kept busy by everything else on the machine (other users' work): noise.
            "other_cpus": round(max(0.0, self.server.machine_busy_seconds - own) / self.seconds, 2),
            "waits": self.server.waits,
        }


@dataclass
class ServerDelta:
    wal_bytes: int
    # CPU seconds of every server process (None when the server is not a local process).
    cpu_seconds: float | None
    # Mean number of active client backends per wait event ("CPU": none) over the window.
    waits: dict[str, float]
    # CPU seconds used on the whole machine (every process, every CPU).
    machine_busy_seconds: float
    # The same means split by who the backend serves (``WalMeter.ROLE``: "job", "online").
    waits_by_role: dict[str, dict[str, float]] = field(default_factory=dict)
    # Share of the window in which some runnable task waited for a CPU (Linux PSI,
    # /proc/pressure/cpu "some"; None where the kernel does not report it).
    cpu_pressure: float | None = None
    seconds: float = 0.0
    # Checkpoints the server counted during the window (timed and requested).
    checkpoints: int | None = None

    def active(self, role: str) -> float:
        """Mean number of active backends of ``role`` (all wait events, CPU included)."""
        return round(sum(self.waits_by_role.get(role, {}).values()), 3)


class WalMeter:
    """The server's side of a window: WAL written, server CPU, what backends waited on.

    WAL is the insert position's advance (``pg_current_wal_insert_lsn``). Server CPU is the sum
    over the postmaster's processes (psutil), when the server runs on this machine. Waits are
    sampled from ``pg_stat_activity`` every 10 ms on a separate connection, per role: a
    backend whose application_name is the daemon's (``JOB_APPLICATION``) serves a job, any
    other client backend the online load; autovacuum workers are a role of their own, left out
    of ``waits``.
    """

    SAMPLE_SECONDS = 0.01
    JOB_APPLICATION = "sessionkeeper-daemon"
    WAITS = """
        SELECT CASE WHEN backend_type = 'autovacuum worker' THEN 'autovacuum'
                    WHEN application_name = %s THEN 'job' ELSE 'online' END,
               coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)
        FROM pg_stat_activity
        WHERE (state = 'active' AND backend_type = 'client backend'
               OR backend_type = 'autovacuum worker')
          AND datname = current_database() AND pid <> pg_backend_pid()
        GROUP BY 1, 2
    """
    # PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer.
    CHECKPOINTS = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    CHECKPOINTS_17 = "SELECT num_timed + num_requested FROM pg_stat_checkpointer"

    def __init__(self, conninfo: str, server_pid: int | None = None) -> None:
        self.conninfo = conninfo
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.server_pid = server_pid
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._waits: Counter[tuple[str, str]] = Counter()
        self._samples = 0
        self._start: tuple[str, float | None, float, float | None, float, int] = (
            "0/0",
            None,
            0.0,
            None,
            0.0,
            0,
        )

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

    def checkpoints(self) -> int:
        newer = self.conn.info.server_version >= 170000
        row = self.conn.execute(self.CHECKPOINTS_17 if newer else self.CHECKPOINTS).fetchone()
        assert row is not None
        return int(row[0])

    def begin(self) -> None:
        self._start = (
            self.lsn(),
            self._server_cpu(),
            _machine_busy(),
            _cpu_stall_seconds(),
            time.perf_counter(),
            self.checkpoints(),
        )
        self._waits = Counter()
        self._samples = 0
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def end(self) -> ServerDelta:
        lsn, cpu, busy, stall, started, checkpoints = self._start
        wal_bytes = self.since(lsn)
        checkpoints = self.checkpoints() - checkpoints
        now_cpu = self._server_cpu()
        busy = _machine_busy() - busy
        now_stall = _cpu_stall_seconds()
        seconds = time.perf_counter() - started
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join()
        samples = max(self._samples, 1)
        overall: Counter[str] = Counter()
        by_role: dict[str, dict[str, float]] = {}
        for (role, name), count in self._waits.most_common():
            if role != "autovacuum":
                overall[name] += count
            by_role.setdefault(role, {})[name] = round(count / samples, 3)
        waits = {name: round(count / samples, 2) for name, count in overall.most_common(5)}
        return ServerDelta(
            wal_bytes,
            None if cpu is None or now_cpu is None else now_cpu - cpu,
            waits,
            busy,
            by_role,
            None if stall is None or now_stall is None else round((now_stall - stall) / seconds, 3),
            seconds,
            checkpoints,
        )

    def close(self) -> None:
        self.conn.close()

    def _server_cpu(self) -> float | None:
        if self.server_pid is None:
            return None
        try:
            postmaster = psutil.Process(self.server_pid)
            processes = [postmaster, *postmaster.children()]
        except psutil.Error:
            return None
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        # Backends that exited during the window: their time is the postmaster's children's
        # now (without it a window in which connections closed could show negative CPU).
        with contextlib.suppress(psutil.Error):
            reaped = postmaster.cpu_times()
            total += reaped.children_user + reaped.children_system
        return total

    def _sample(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while self._sampling.is_set():
                for role, name, count in conn.execute(self.WAITS, (self.JOB_APPLICATION,)):
                    self._waits[role, name] += count
                self._samples += 1
                time.sleep(self.SAMPLE_SECONDS)


def _cpu_stall_seconds() -> float | None:
    """Seconds in which some runnable task of the machine waited for a CPU, since boot."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
    except OSError:
        return None
    return int(some[-1].partition("=")[2]) / 1e6


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


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
    wal.begin()
    cpu = time.process_time()
    await asyncio.sleep(max(0.0, clock.stop - time.perf_counter()))
    cpu = time.process_time() - cpu
    server = wal.end()
    await asyncio.gather(*tasks)
    return _window((cpu, server), latencies, duration)


def _measure(
    clock: _Clock, wal: WalMeter, sleep: Callable[[float], None]
) -> tuple[float, ServerDelta]:
    sleep(max(0.0, clock.start - time.perf_counter()))
    wal.begin()
    cpu = time.process_time()
    sleep(max(0.0, clock.stop - time.perf_counter()))
    cpu = time.process_time() - cpu
    return cpu, wal.end()


def _window(
    edges: tuple[float, ServerDelta], latencies: list[list[float]], duration: float
) -> Window:
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
