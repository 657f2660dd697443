"""Client instructions per turn, counted by callgrind: repeatable on a loaded machine.

Wall-clock and CPU-time figures move with the machine's other load; the instructions a turn
executes do not. Prepare a database once, then count under valgrind::

    python -m bench.instructions prepare URL
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        python -m bench.instructions run URL --design async --workers 16

Only the measured turns run inside ``functools.reduce`` (a C function nothing else on the hot
path calls), so ``--toggle-collect`` counts them and neither start-up nor the warm-up; divide
the "Collected" total by ``--turns``. ``--design``: ``sync`` (``Store``, one thread per worker),
``async`` (``AsyncStore``, one task per worker on one event loop) or ``uvloop`` (the same on
uvloop's loop). Each worker serves its own users in turn, as in bench/hotpath.py. ``prepare``
also seeds ``--bystanders`` users that no turn touches, so that the tables are not tiny (on a
tiny table the planner picks sequential scans that a real database never runs).

The server's side, counted the same way: run the postmaster itself under valgrind (its
backends are forks, one output file each, ``%p``) with collection on only inside statements
and commits, ``--collect-atstart=no --toggle-collect=PortalRun --toggle-collect=PortalStart
--toggle-collect=GetCachedPlan --toggle-collect=StartTransactionCommand
--toggle-collect=CommitTransactionCommand``; ``run --design sync --workers 1`` prints the pid of
the backend that serves every turn. The difference between runs of 300 and 100 turns (after the
same warm-up, with ``VACUUM`` before each and autovacuum off) divided by 200 is one turn's count.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import threading
from datetime import timedelta
from typing import Any

import psycopg

from . import this_store, workload

USERS = 64
# The turns run long after ``prepare``: sessions must not go stale meanwhile (a stale one is
# replaced by a new one that carries only a few pairs, and the turn would read less).
OPTIONS: dict[str, Any] = {"rate_per_minute": 10**9, "idle_timeout": timedelta(days=365)}


def _turns(count: int, workers: int) -> list[list[tuple[str, int]]]:
    users = workload.channel_user_ids(USERS, prefix="i")
    shares = [workload.assigned(users, workers, w) for w in range(workers)]
    return [
        [(shares[w][i % len(shares[w])], w * 1_000_003 + i) for i in range(w, count, workers)]
        for w in range(workers)
    ]


def run_sync(url: str, workers: int, warmup: int, turns: int, group: bool = False) -> None:
    from store import Store

    store = Store(url, min_size=workers, max_size=workers, **OPTIONS)
    design = this_store.GroupStoreDesign(url) if group else this_store.StoreDesign(url)
    design.store = store
    store.pool.wait()
    if workers == 1:
        # For counting the server's side: the backend that serves every turn.
        conn = store.pool.getconn()
        print(f"backend pid {conn.info.backend_pid}", file=sys.stderr)
        store.pool.putconn(conn)

    def work(plan: list[tuple[str, int]]) -> None:
        for user, seed in plan:
            design.turn(0, user, seed)

    def in_threads(plans: list[list[tuple[str, int]]], measured: bool) -> None:
        errors: list[BaseException] = []

        def run(plan: list[tuple[str, int]]) -> None:
            try:
                if measured:  # callgrind toggles collection per thread: each runs reduce
                    functools.reduce(lambda _, p: work(p), [plan], None)
                else:
                    work(plan)
            except BaseException as exc:  # a failed turn fails the count
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(p,)) for p in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    in_threads(_turns(warmup, workers), measured=False)
    in_threads(_turns(turns, workers), measured=True)
    store.close()


def run_async(url: str, workers: int, warmup: int, turns: int, uvloop: bool) -> None:
    from store import AsyncStore

    loop: asyncio.AbstractEventLoop
    if uvloop:
        import uvloop as uv

        loop = uv.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    store = AsyncStore(url, min_size=workers, max_size=workers, **OPTIONS)
    design = this_store.AsyncStoreDesign(url)
    design.store = store

    async def work(plan: list[tuple[str, int]]) -> None:
        for user, seed in plan:
            await design.turn(0, user, seed)

    async def in_tasks(plans: list[list[tuple[str, int]]]) -> None:
        await asyncio.gather(*(work(p) for p in plans))

    async def start() -> None:
        await store.open()
        await store.pool.wait()
        await in_tasks(_turns(warmup, workers))

    loop.run_until_complete(start())
    # The loop runs the measured turns inside reduce: its own work between them counts too.
    measured = _turns(turns, workers)
    functools.reduce(lambda _, plans: loop.run_until_complete(in_tasks(plans)), [measured], None)
    loop.run_until_complete(store.close())
    loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("action", choices=("prepare", "run"))
    parser.add_argument("url")
    parser.add_argument("--design", choices=("sync", "async", "uvloop"), default="sync")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument(
        "--group",
        action="store_true",
        help="sync only: turns in a group chat (each member's conversation there); prepare:"
        " also seed those conversations",
    )
    parser.add_argument(
        "--bystanders",
        type=int,
        default=5000,
        help="prepare: other users with full histories, so that tables have a realistic size"
        " and the plans are the index lookups a real database gets",
    )
    args = parser.parse_args(argv)
    if args.action == "prepare":
        this_store.install(args.url)
        users = workload.channel_user_ids(USERS, prefix="i")
        this_store.seed_users(args.url, users, workload.history(workload.HISTORY_PAIRS))
        if args.group:
            this_store.seed_users(
                args.url,
                users,
                workload.history(workload.HISTORY_PAIRS),
                chat_id=this_store.GROUP_CHAT,
                existing=True,
            )
        others = workload.channel_user_ids(args.bystanders, prefix="b")
        this_store.seed_users(args.url, others, workload.history(workload.HISTORY_PAIRS))
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    elif args.design == "sync":
        run_sync(args.url, args.workers, args.warmup, args.turns, args.group)
    else:
        run_async(args.url, args.workers, args.warmup, args.turns, args.design == "uvloop")


if __name__ == "__main__":
    main()
