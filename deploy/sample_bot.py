"""A sample bot for deploy/compose.yaml: a real ``store.Store``, instrumented with
``store.metrics``, serving its metrics and taking turns until SIGTERM, so that Prometheus scrapes
a bot and the store dashboard's "Bots" row shows data.

    python deploy/sample_bot.py [--host H] [--port 9465] [--interval SECONDS]

The database is the store's own default (SESSIONKEEPER_DATABASE_URL, DATABASE_URL). Three users
chat against a cap of 5 turns a minute each, so turns are admitted and refused; every tenth
reply holds a NUL character, which the store refuses (InvalidInput, the bot's own input: no
alert), so the errors panel has data too. tests/integration/test_prometheus_live.py runs this
script under a real Prometheus.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

import store
import store.metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of /metrics")
    parser.add_argument("--port", type=int, default=9465, help="port of /metrics")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between turns")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    registry = CollectorRegistry()
    with store.Store(max_size=2, rate_per_minute=5, channels=frozenset({"telegram"})) as db:
        store.metrics.instrument(db, registry=registry, name="sample")
        server, thread = start_http_server(args.port, addr=args.host, registry=registry)
        turns = 0
        while not stopping.wait(args.interval):
            # A database outage shows in the metrics (errors, pool) and the alerts: carry on.
            with contextlib.suppress(store.DatabaseUnavailable):
                take_turn(db, turns)
            turns += 1
        server.shutdown()
        thread.join(timeout=5)


def take_turn(db: store.Store, number: int) -> None:
    turn = db.begin_turn("telegram", f"sample-user-{number % 3}")
    if turn.allowed:
        reply = "bad\x00reply" if number % 10 == 0 else "hello"
        with contextlib.suppress(store.InvalidInput):
            db.finish_turn(turn, "hi", reply)


if __name__ == "__main__":
    main()
