"""History growth: what one append of a 900-byte pair costs as the history fills.

For each design, ``sessions`` sessions hold no messages and as many hold 40 messages of 2 KB;
one append of a user message (300 B) and a reply (600 B) goes to each session once, from a
single worker, alternating empty and full so that both see the same server state. Reported per
append: median and p99 latency and WAL bytes (LSN delta around each append).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from . import seed_port, workload
from .harness import WalMeter, median, percentile

FULL_MESSAGES = 40
FULL_MESSAGE_BYTES = 2048


class GrowthDesign(Protocol):
    name: str
    conninfo: str

    def prepare(self, sessions: int) -> tuple[list[Any], list[Any]]:
        """Create ``sessions`` empty and ``sessions`` full sessions; returns both id lists."""

    def append(self, session_id: Any, messages: list[dict[str, str]]) -> None: ...

    def close(self) -> None: ...


def full_history() -> list[dict[str, str]]:
    return workload.history(FULL_MESSAGES // 2, FULL_MESSAGE_BYTES, FULL_MESSAGE_BYTES)


class SeedGrowth:
    """The seed port's ``appendMessages``: the JSONB array rewritten with the pair appended."""

    name = "seed port"

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        seed_port.install(conninfo)
        self.seed = seed_port.Seed(conninfo)

    def prepare(self, sessions: int) -> tuple[list[Any], list[Any]]:
        users = workload.channel_user_ids(2 * sessions, prefix="g")
        seed_port.seed_users(self.conninfo, workload.CHANNEL, users[:sessions], [])
        seed_port.seed_users(self.conninfo, workload.CHANNEL, users[sessions:], full_history())
        query = (
            "SELECT s.session_id FROM sessions s JOIN users u USING (user_id)"
            " WHERE u.channel_user_id = ANY(%s) ORDER BY u.channel_user_id"
        )
        conn = self.seed.conn
        empty = [r["session_id"] for r in conn.execute(query, (users[:sessions],))]
        full = [r["session_id"] for r in conn.execute(query, (users[sessions:],))]
        return empty, full

    def append(self, session_id: Any, messages: list[dict[str, str]]) -> None:
        self.seed.append_messages(session_id, messages)

    def close(self) -> None:
        self.seed.close()


@dataclass
class GrowthResult:
    design: str
    history: str
    latencies_ms: list[float]
    wal_bytes: list[int]

    def record(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "history": self.history,
            "appends": len(self.latencies_ms),
            "p50_ms": round(median(self.latencies_ms), 3),
            "p99_ms": round(percentile(self.latencies_ms, 99), 3),
            "wal_bytes_per_append": round(median([float(b) for b in self.wal_bytes])),
        }


def measure(design: GrowthDesign, sessions: int, wal: WalMeter) -> list[GrowthResult]:
    empty, full = design.prepare(sessions)
    results = {
        "empty": GrowthResult(design.name, "empty", [], []),
        f"{FULL_MESSAGES} x 2 KB": GrowthResult(design.name, f"{FULL_MESSAGES} x 2 KB", [], []),
    }
    empty_result, full_result = results.values()
    for i, (e, f) in enumerate(zip(empty, full, strict=True)):
        for session_id, result in ((e, empty_result), (f, full_result)):
            pair = workload.pair(i)
            lsn = wal.lsn()
            t0 = time.perf_counter()
            design.append(session_id, pair)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.wal_bytes.append(wal.since(lsn))
    return [empty_result, full_result]
