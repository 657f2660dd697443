"""The hot path: one bot turn per operation, on full 40-message histories.

A turn is what a bot does per incoming message: user, rate check, session, history read, append
the user message and the reply, trim, usage. Each design is prepared once in its own database
(``users`` users, each with an active session holding 20 pairs) and then driven at each
concurrency by closed-loop workers; each worker serves its own users in turn, as one user's
messages arrive one after another.

Rate caps are raised out of reach for the benchmark (the check still runs on every turn): at
hundreds of turns per second a few hundred users would otherwise be refused within a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from . import seed_port, workload
from .harness import RoundTripCounter, WalMeter, Window, run_tasks, run_threads

UNLIMITED = 1_000_000_000
T = TypeVar("T")


class Design(Protocol):
    """A store driven by the hot-path benchmark."""

    name: str
    asynchronous: bool
    conninfo: str

    def prepare(self, users: list[str]) -> None:
        """Create the schema and the users with full histories."""

    def open(self, conninfo: str, workers: int) -> Any:
        """Connect for ``workers`` concurrent workers (a coroutine for asynchronous designs)."""

    def turn(self, worker: int, channel_user_id: str, seed: int) -> Any:
        """One turn (a coroutine for asynchronous designs)."""

    def close(self) -> Any:
        """Release connections (a coroutine for asynchronous designs)."""


class SeedDesign:
    """The seed port: one autocommit connection per worker, six statements per turn."""

    name = "seed port"
    asynchronous = False

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._stores: list[seed_port.Seed] = []

    def prepare(self, users: list[str]) -> None:
        seed_port.install(self.conninfo)
        seed_port.seed_users(
            self.conninfo, workload.CHANNEL, users, workload.history(workload.HISTORY_PAIRS)
        )

    def open(self, conninfo: str, workers: int) -> None:
        self._stores = [
            seed_port.Seed(conninfo, rate_limit_per_minute=UNLIMITED) for _ in range(workers)
        ]

    def turn(self, worker: int, channel_user_id: str, seed: int) -> None:
        user_text, reply = texts(seed)
        read = self._stores[worker].turn(workload.CHANNEL, channel_user_id, user_text, reply)
        assert read == workload.HISTORY_PAIRS * 2, f"seed port read {read} messages"

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._stores = []


# Pre-generated pairs, so that making text costs the workers nothing. A prime count: a user
# whose turns come every k-th operation still gets a different pair each turn, so no history
# repeats itself (a repeated pair would let TOAST compress the seed's array and flatter it).
_TEXT_VARIANTS = 1021


def texts(seed: int) -> tuple[str, str]:
    return _PAIRS[seed % _TEXT_VARIANTS]


_PAIRS = [
    (workload.text(workload.USER_BYTES, 2 * i), workload.text(workload.REPLY_BYTES, 2 * i + 1))
    for i in range(_TEXT_VARIANTS)
]


def _runner(design: Design) -> Callable[[Coroutine[Any, Any, T]], T]:
    """How an asynchronous design's coroutine runs: asyncio's loop unless it names another."""
    return getattr(design, "run", asyncio.run)


@dataclass
class HotPathResult:
    design: str
    workers: int
    window: Window

    def record(self) -> dict[str, Any]:
        return {"design": self.design, "workers": self.workers, **self.window.summary()}


def _operation(design: Design, users: list[str], workers: int) -> Callable[[int, int], Any]:
    shares = [workload.assigned(users, workers, w) for w in range(workers)]

    def operation(worker: int, i: int) -> Any:
        mine = shares[worker]
        return design.turn(worker, mine[i % len(mine)], worker * 1_000_003 + i)

    return operation


def measure(
    design: Design,
    users: list[str],
    workers: int,
    *,
    warmup: float,
    duration: float,
    wal: WalMeter,
) -> HotPathResult:
    """Turns per second, latency, WAL and client CPU per turn at one concurrency."""
    operation = _operation(design, users, workers)
    conninfo = design.conninfo
    if design.asynchronous:

        async def main() -> Window:
            await design.open(conninfo, workers)
            try:
                return await run_tasks(
                    workers, operation, warmup=warmup, duration=duration, wal=wal
                )
            finally:
                await design.close()

        window = _runner(design)(main())
    else:
        design.open(conninfo, workers)
        try:
            window = run_threads(workers, operation, warmup=warmup, duration=duration, wal=wal)
        finally:
            design.close()
    return HotPathResult(design.name, workers, window)


def round_trips(design: Design, proxy: RoundTripCounter, users: list[str]) -> float:
    """Client-server exchanges per turn, counted on the wire over a few single-worker turns."""
    turns = min(20, len(users))
    operation = _operation(design, users, 1)
    # Outside the count: connecting, and psycopg preparing each statement on its 5th use.
    warmup = 8

    async def run_async() -> int:
        await design.open(proxy.conninfo(design.conninfo), 1)
        try:
            for i in range(warmup):
                await operation(0, i)
            with proxy.counting() as counted:
                for i in range(warmup, warmup + turns):
                    await operation(0, i)
            return counted[0]
        finally:
            await design.close()

    if design.asynchronous:
        exchanges = _runner(design)(run_async())
    else:
        design.open(proxy.conninfo(design.conninfo), 1)
        try:
            for i in range(warmup):
                operation(0, i)
            with proxy.counting() as counted:
                for i in range(warmup, warmup + turns):
                    operation(0, i)
            exchanges = counted[0]
        finally:
            design.close()
    return exchanges / turns
