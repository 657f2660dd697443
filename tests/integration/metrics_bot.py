"""A small bot for tests/integration/test_prometheus_live.py: a real ``store.Store`` instrumented
with ``store.metrics`` and served on loopback, taking turns until SIGTERM.

    python tests/integration/metrics_bot.py PORT   (database from SESSIONKEEPER_DATABASE_URL)

Three users chat five times a second against a cap of 5 a minute, so turns are admitted and
refused; every tenth turn sends a reply with a NUL character, which the store refuses
(``InvalidInput``), so the error series exist too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

import store
import store.metrics


def main(port: int) -> None:
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    registry = CollectorRegistry()
    with store.Store(max_size=2, rate_per_minute=5) as db:
        store.metrics.instrument(db, registry=registry)
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        turns = 0
        while not stopping.wait(0.2):
            turn = db.begin_turn("telegram", f"user-{turns % 3}")
            if turn.allowed:
                reply = "bad\x00reply" if turns % 10 == 0 else "hello"
                with contextlib.suppress(store.InvalidInput):
                    db.finish_turn(turn, "hi", reply)
            turns += 1
        server.shutdown()
        thread.join(timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]))
