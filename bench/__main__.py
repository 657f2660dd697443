"""python -m bench: every benchmark in one command (see docs/benchmarks.md).

Prints the tables and writes every measured record to ``bench/out/bench-<time>.jsonl`` plus the
tables to ``bench/out/bench-<time>.md``. ``--quick`` is a short smoke run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from sessionkeeper.jobs.registry import JOBS as REGISTRY

from . import (
    checkpoints,
    daemon,
    growth,
    hotpath,
    jobs_scale,
    peer,
    pgbench,
    plots,
    profile,
    report,
    scale,
    this_store,
    workload,
)
from .harness import RoundTripCounter, WalMeter
from .server import SERVER_CHOICES, Server, open_server

SECTIONS = ("hotpath", "profile", "growth", "peer", "scale", "jobs", "checkpoints")
OUT_DIR = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (about a minute)")
    parser.add_argument(
        "--runs", type=int, help="runs of the hot path and the jobs to take medians of (3; quick 1)"
    )
    parser.add_argument("--duration", type=float, help="seconds measured per cell (8; quick 2)")
    parser.add_argument("--workers", default="1,4,16", help="concurrencies (default 1,4,16)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--server",
        choices=SERVER_CHOICES,
        default="auto",
        help="auto: SESSIONKEEPER_BENCH_DATABASE_URL, else Debian's PostgreSQL 15, else embedded",
    )
    parser.add_argument(
        "--backlogs",
        help="the jobs backlogs to run, each a divisor of the full one (default 1,10; quick 50;"
        " 0.1 is ten times the full backlog)",
    )
    parser.add_argument(
        "--jobs-scale",
        type=float,
        help="one jobs backlog, as a divisor (release 0.2's option: --backlogs with one value)",
    )
    parser.add_argument(
        "--window",
        type=float,
        help="seconds of the jobs' online windows: idle before each job, then from its start"
        " (default 60; quick 3)",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=plots.PLOTS_DIR,
        help="directory the PNG pictures are written to (default bench/plots)",
    )
    parser.add_argument(
        "--online-rate", type=float, default=100.0, help="turns/s of the load beside the jobs"
    )
    parser.add_argument(
        "--job-pauses",
        default="",
        help="pauses between batches (s) to also run each job with, once (default none)",
    )
    parser.add_argument(
        "--jobs",
        default=",".join(jobs_scale.JOBS),
        help=f"jobs the jobs section times (default {','.join(jobs_scale.JOBS)})",
    )
    parser.add_argument(
        "--job-variant",
        action="append",
        default=[],
        metavar="JOB.KEY=VALUE[,...]",
        help="job settings to run beside the defaults, interleaved run by run (A/B), e.g."
        " session_archival.batch_seconds=0.1,session_archival.pause_ratio=3; repeatable",
    )
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        help="skip the jobs section's last step: `sessionkeeper run` as a process on a fresh"
        " backlog, for its peak memory (VmHWM)",
    )
    parser.add_argument(
        "--scale-users",
        help="user counts for the scale section (default 1000,1000000: the 1M-user point, about"
        " 10 minutes to load; quick 1000,10000)",
    )
    parser.add_argument(
        "--scale-hot",
        type=int,
        default=1000,
        help="also run each larger user count with the turns spread over only this many of its"
        " users (default 1000; 0: not), to tell table size from cache misses",
    )
    parser.add_argument(
        "--scale-messages",
        type=int,
        default=10,
        help="messages each user's session holds in the scale section (default 10: 1,000,000"
        " users hold 10,000,000 messages)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the records")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.warmup = 0.5 if args.quick else 1.0
    args.users = 64 if args.quick else 256
    args.growth_sessions = 30 if args.quick else 200
    if args.jobs_scale is not None:
        args.backlogs = str(args.jobs_scale)
    args.backlogs = [
        float(b) for b in (args.backlogs or ("50" if args.quick else "1,10")).split(",")
    ]
    args.jobs_scale = args.backlogs[0]
    args.window = args.window or (3.0 if args.quick else 60.0)
    args.pgbench_scale = 4 if args.quick else 16
    args.worker_counts = [int(w) for w in args.workers.split(",")]
    args.job_pauses = [float(p) for p in args.job_pauses.split(",") if p and float(p) > 0]
    scale_users = args.scale_users or ("1000,10000" if args.quick else "1000,1000000")
    args.scale_users = [int(n) for n in scale_users.split(",") if n]
    args.sections = [s for s in args.only.split(",") if s]
    args.jobs = tuple(j for j in args.jobs.split(",") if j)
    if set(args.jobs) - set(jobs_scale.JOBS):
        parser.error(f"--jobs: one of {','.join(jobs_scale.JOBS)}")
    try:
        args.variants = {"default": {}} | {v: parse_variant(v) for v in args.job_variant}
    except ValueError as exc:
        parser.error(f"--job-variant: {exc}")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def parse_variant(text: str) -> dict[str, dict[str, float | int | bool]]:
    """``job.key=value,...`` as settings per job (every job setting is a number or a flag)."""
    settings: dict[str, dict[str, float | int | bool]] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        job, _, key = name.strip().partition(".")
        if not (job and key and value):
            raise ValueError(f"{item!r} is not JOB.KEY=VALUE")
        parsed: float | int | bool
        if value.strip().lower() in ("true", "false"):
            parsed = value.strip().lower() == "true"
        else:
            number = float(value)
            parsed = int(number) if number.is_integer() else number
        settings.setdefault(job, {})[key] = parsed
    return settings


def store_designs(conninfo: str) -> list[hotpath.Design]:
    """This store, sync and async (and on uvloop when installed), on one database; none while
    store.Store is missing."""
    if not this_store.available():
        return []
    designs: list[hotpath.Design] = [
        this_store.StoreDesign(conninfo),
        this_store.AsyncStoreDesign(conninfo),
    ]
    if this_store.uvloop_available():
        designs.append(this_store.UvloopStoreDesign(conninfo))
    return designs


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, recorder: report.Recorder):
        self.args = args
        self.server = server
        self.rec = recorder
        self.tables: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)

    def show(self, title: str, body: str) -> None:
        block = f"### {title}\n\n{body}\n"
        self.tables.append(block)
        self.say("\n" + block)

    def checkpoints(self) -> None:
        """The LangGraph checkpointer against PostgresSaver (bench/checkpoints.py)."""
        if not checkpoints.available():
            self.say(
                "langgraph / langgraph-checkpoint-postgres missing (pip install -e '.[bench]')"
            )
            return
        args = self.args
        turns = 3 if args.quick else 10
        replays = 3 if args.quick else 10
        savers = checkpoints.savers(self.server.create_database)
        rows = []
        for history in (10, 100):
            for workers in args.worker_counts:
                for saver in savers:
                    record = checkpoints.measure(saver, history, workers, turns, replays)
                    rows.append(self.rec.add("checkpoints", **record))
                    self.say(
                        f"checkpoints {saver.name:14} history {history:3} x{workers:<2}"
                        f" {record['turns_per_s']:7.1f} turns/s"
                        f" {record.get('put_per_s') or 0:8.1f} put/s"
                    )
        self.show("LangGraph checkpoints", report.table(rows, checkpoints.COLUMNS))
        kept = []
        for saver in savers:
            if saver.conninfo and not saver.is_async:
                for keep in (True, False):
                    record = checkpoints.retention(saver, keep)
                    kept.append(self.rec.add("checkpoint_retention", **record))
                    self.say(f"retention {saver.name:14} {kept[-1]}")
        self.show(
            "LangGraph checkpoints: 10,000 steps, retention off and on",
            report.table(kept, checkpoints.RETENTION_COLUMNS),
        )

    # -- hot path ---------------------------------------------------------------------------

    def hotpath(self) -> None:
        args = self.args
        users = workload.channel_user_ids(args.users)
        designs: list[hotpath.Design] = [
            hotpath.SeedDesign(self.server.create_database("skbench_seed"))
        ]
        mine = store_designs(self.server.create_database("skbench_store"))
        if not mine:
            self.say("store.Store / store.AsyncStore not importable: the store is skipped")
        else:
            # Issue 23: a turn in a group chat, and a turn that used a tool.
            mine.append(this_store.GroupStoreDesign(mine[0].conninfo))
            mine.append(this_store.ToolStoreDesign(self.server.create_database("skbench_tools")))
        designs.extend(mine)
        if peer.available():
            designs.append(peer.PeerDesign(self.server.create_database("skbench_peer")))
        else:
            self.say("langchain-postgres not installed (pip install -e '.[bench]'): peer skipped")
        for design in designs:
            t0 = time.perf_counter()
            design.prepare(users)
            self.say(
                f"prepared {design.name}: {len(users)} users x 40 messages "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        for design in designs:
            proxy = RoundTripCounter(design.conninfo)
            try:
                trips = hotpath.round_trips(design, proxy, users)
            finally:
                proxy.close()
            self.rec.add("round_trips", design=design.name, round_trips_per_turn=trips)

        bench_url = None
        if self.server.pgbench is not None:
            bench_url = self.server.create_database("skbench_pgbench")
            pgbench.initialise(self.server.pgbench, bench_url, args.pgbench_scale)
        else:
            self.say("no pgbench found: the ceiling is skipped (apt-get install postgresql-15)")

        for run in range(args.runs):
            for workers in args.worker_counts:
                for design in designs:
                    wal = WalMeter(design.conninfo, self.server.pid)
                    try:
                        result = hotpath.measure(
                            design,
                            users,
                            workers,
                            warmup=args.warmup,
                            duration=args.duration,
                            wal=wal,
                        )
                    finally:
                        wal.close()
                    record = self.rec.add("hotpath", run=run, **result.record())
                    self.say(
                        f"run {run + 1} hotpath {design.name:14} x{workers:<2} "
                        f"{record['ops_per_s']:8.1f} turns/s  p99 {record['p99_ms']:.1f} ms"
                    )
                if self.server.pgbench is not None and bench_url is not None:
                    for script in pgbench.BUILTINS:
                        tps = pgbench.tps(
                            self.server.pgbench, bench_url, script, workers, args.duration
                        )
                        self.rec.add("pgbench", run=run, script=script, workers=workers, tps=tps)
                        self.say(f"run {run + 1} pgbench {script:12} x{workers:<2} {tps:10.1f} tps")
        self.hotpath_tables()

    def hotpath_tables(self) -> None:
        rows = report.medians(
            self.rec.section("hotpath"),
            ("design", "workers"),
            (
                "ops_per_s",
                "p50_ms",
                "p99_ms",
                "wal_bytes_per_op",
                "client_cpu_ms_per_op",
                "server_cpu_ms_per_op",
                "busy_cpus",
                "other_cpus",
            ),
        )
        trips = {r["design"]: r["round_trips_per_turn"] for r in self.rec.section("round_trips")}
        ceiling = {
            (r["script"], r["workers"]): r["tps"]
            for r in report.medians(self.rec.section("pgbench"), ("script", "workers"), ("tps",))
        }
        seed = {r["workers"]: r["ops_per_s"] for r in rows if r["design"] == "seed port"}
        for row in rows:
            row["round_trips"] = trips.get(row["design"])
            row["vs_seed"] = (
                row["ops_per_s"] / seed[row["workers"]] if seed.get(row["workers"]) else None
            )
            tpcb = ceiling.get(("tpcb-like", row["workers"]))
            select = ceiling.get(("select-only", row["workers"]))
            row["vs_tpcb"] = row["ops_per_s"] / tpcb if tpcb else None
            row["vs_select"] = row["ops_per_s"] / select if select else None
            row["wal_kb"] = row["wal_bytes_per_op"] / 1024
            # The worst window: one that follows a checkpoint logs full-page images.
            row["wal_kb_max"] = (
                max(
                    r["wal_bytes_per_op"]
                    for r in self.rec.section("hotpath")
                    if (r["design"], r["workers"]) == (row["design"], row["workers"])
                )
                / 1024
            )
        rows.sort(key=lambda r: (r["workers"], r["design"]))
        self.show(
            f"Hot path: one turn on a 40-message history (medians of {self.args.runs} runs)",
            report.table(
                rows,
                [
                    ("design", "design"),
                    ("workers", "workers"),
                    ("ops_per_s", "turns/s"),
                    ("vs_seed", "x seed"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("round_trips", "round trips"),
                    ("wal_kb", "WAL KB/turn"),
                    ("wal_kb_max", "worst window"),
                    ("vs_tpcb", "/ tpcb-like"),
                    ("vs_select", "/ select-only"),
                ],
            ),
        )
        waits = report.mean_waits(self.rec.section("hotpath"), ("design", "workers"))
        for row in rows:
            row["waits"] = waits.get((row["design"], row["workers"]), "")
            # Turns per CPU-second, client and server together: what a design gets out of the
            # CPU it is given. On a machine shared with other work, turns/s also measures how
            # much CPU a design wins from the scheduler (16 threads win more than one event-loop
            # thread), so AsyncStore and Store are compared on this figure too.
            cpu = (row["client_cpu_ms_per_op"] or 0) + (row["server_cpu_ms_per_op"] or 0)
            row["turns_per_cpu_s"] = 1000 / cpu if cpu else None
        self.show(
            "Where a turn's time goes (client and server CPU per turn, CPUs they kept busy, CPUs"
            " other processes on the machine kept busy, and the mean number of active backends"
            " per wait event, sampled every 10 ms)",
            report.table(
                rows,
                [
                    ("design", "design"),
                    ("workers", "workers"),
                    ("client_cpu_ms_per_op", "client CPU ms/turn"),
                    ("server_cpu_ms_per_op", "server CPU ms/turn"),
                    ("turns_per_cpu_s", "turns per CPU-s"),
                    ("busy_cpus", "CPUs busy"),
                    ("other_cpus", "other load (CPUs)"),
                    ("waits", "active backends by wait"),
                ],
            ),
        )
        ceiling_rows = [
            {"script": s, "workers": w, "tps": tps} for (s, w), tps in sorted(ceiling.items())
        ]
        if ceiling_rows:
            self.show(
                "pgbench ceiling (same run, medians)",
                report.table(
                    ceiling_rows, [("script", "script"), ("workers", "clients"), ("tps", "tps")]
                ),
            )

    # -- one turn, step by step ------------------------------------------------------------

    def profile(self) -> None:
        repeat = 100 if self.args.quick else 300
        rows = profile.seed_steps(self.server.create_database("skbench_profile_seed"), repeat)
        if this_store.available():
            url = self.server.create_database("skbench_profile_store")
            rows += profile.store_steps(url, repeat)
        for row in rows:
            self.rec.add("profile", repeat=repeat, **row)
        self.show(
            f"One turn step by step: median latency of each step, one connection, no other load"
            f" ({repeat} turns)",
            report.table(rows, [("design", "design"), ("step", "step"), ("ms", "median ms")]),
        )

    # -- history growth ---------------------------------------------------------------------

    def growth(self) -> None:
        designs: list[growth.GrowthDesign] = [
            growth.SeedGrowth(self.server.create_database("skbench_growth_seed"))
        ]
        if this_store.available():
            designs.append(
                this_store.StoreGrowth(self.server.create_database("skbench_growth_store"))
            )
        rows = []
        for design in designs:
            wal = WalMeter(design.conninfo)
            try:
                for result in growth.measure(design, self.args.growth_sessions, wal):
                    rows.append(self.rec.add("growth", **result.record()))
            finally:
                wal.close()
                design.close()
        for row in rows:
            base = next(r for r in rows if r["design"] == row["design"] and r["history"] == "empty")
            row["vs_empty"] = row["p50_ms"] / base["p50_ms"] if base["p50_ms"] else None
            row["wal_kb"] = row["wal_bytes_per_append"] / 1024
        self.show(
            "History growth: one append of a 900-byte pair",
            report.table(
                rows,
                [
                    ("design", "design"),
                    ("history", "history held"),
                    ("appends", "appends"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("vs_empty", "x empty"),
                    ("wal_kb", "WAL KB/append"),
                ],
            ),
        )

    # -- the peer as a conversation grows ---------------------------------------------------

    def peer(self) -> None:
        if not peer.available():
            self.say("langchain-postgres not installed (pip install -e '.[bench]'): peer skipped")
            return
        lengths = [40, 400, 2000] if self.args.quick else [40, 200, 1000, 4000]
        turns = 50 if self.args.quick else 200
        store_url = (
            self.server.create_database("skbench_peer_store") if this_store.available() else None
        )
        if store_url is not None:
            this_store.install(store_url)
        url = self.server.create_database("skbench_peer_growth")
        from langchain_postgres import PostgresChatMessageHistory

        with psycopg.connect(url) as conn:
            PostgresChatMessageHistory.create_tables(conn, peer.TABLE)
        rows = [
            self.rec.add("peer_growth", **r) for r in peer.growth(url, lengths, turns, store_url)
        ]
        self.show(
            f"A turn as the conversation grows (one worker, {turns} turns per cell): the peer"
            " reads the whole conversation, this store the newest 40 messages",
            report.table(
                rows,
                [
                    ("design", "design"),
                    ("conversation", "messages in the conversation"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("client_cpu_ms_per_op", "client CPU ms/turn"),
                ],
            ),
        )

    # -- cost as users grow -----------------------------------------------------------------

    def scale(self) -> None:
        if not this_store.available():
            return
        args = self.args
        rows = []
        for users in args.scale_users:
            url = self.server.create_database("skbench_scale")
            t0 = time.perf_counter()
            timings = scale.seed(url, users, args.scale_messages)
            self.say(
                f"scale: {users:,} users x {args.scale_messages} messages seeded"
                f" in {time.perf_counter() - t0:.0f} s {timings}"
            )
            self.rec.add("scale_seed", users=users, messages=args.scale_messages, seconds=timings)
            for run in range(args.runs):
                for workers in args.worker_counts:
                    # Over every user, then (larger counts) over a hot few of the same tables.
                    spreads: list[int | None] = [None]
                    if 0 < args.scale_hot < users:
                        spreads.append(args.scale_hot)
                    for spread in spreads:
                        result = scale.measure(url, users, workers, args, self.server.pid, spread)
                        rows.append(
                            self.rec.add("scale", run=run, messages=args.scale_messages, **result)
                        )
                        self.say(
                            f"run {run + 1} scale {users:>9,} users (turns over"
                            f" {result['spread']:,}) x{workers}:"
                            f" {result['ops_per_s']:.0f} turns/s,"
                            f" {result['client_cpu_ms_per_op']} +"
                            f" {result['server_cpu_ms_per_op']} CPU ms/turn,"
                            f" {result['blocks_read_per_op']} blocks read/turn"
                        )
            self.server.drop_database("skbench_scale")
        self.scale_tables(rows)

    def scale_tables(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            record.setdefault("spread", record["users"])
        rows = report.medians(
            records,
            ("users", "spread", "workers"),
            (
                "ops_per_s",
                "p50_ms",
                "p99_ms",
                "client_cpu_ms_per_op",
                "server_cpu_ms_per_op",
                "blocks_read_per_op",
                "other_cpus",
                "database_mb",
            ),
        )
        smallest = min(r["users"] for r in rows)
        base = {r["workers"]: r for r in rows if r["users"] == smallest}
        for row in rows:
            cpu = (row["client_cpu_ms_per_op"] or 0) + (row["server_cpu_ms_per_op"] or 0)
            row["cpu_ms_per_op"] = cpu
            first = base.get(row["workers"])
            first_cpu = (
                (first["client_cpu_ms_per_op"] or 0) + (first["server_cpu_ms_per_op"] or 0)
                if first
                else 0
            )
            row["cpu_vs_smallest"] = cpu / first_cpu if first_cpu else None
        self.show(
            f"Cost as users grow: this store (sync), each user with a session of"
            f" {self.args.scale_messages} messages, turns spread uniformly over all users"
            f" (medians of {self.args.runs} runs)",
            report.table(
                rows,
                [
                    ("users", "users"),
                    ("spread", "turns over users"),
                    ("workers", "workers"),
                    ("ops_per_s", "turns/s"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("client_cpu_ms_per_op", "client CPU ms/turn"),
                    ("server_cpu_ms_per_op", "server CPU ms/turn"),
                    ("cpu_vs_smallest", f"CPU x {smallest:,} users"),
                    ("blocks_read_per_op", "blocks read/turn"),
                    ("other_cpus", "other load (CPUs)"),
                    ("database_mb", "database MB"),
                ],
            ),
        )
        # What explains the CPU per turn: sizes against shared_buffers, and hit rates.
        last: dict[tuple[int, int], dict[str, Any]] = {}
        for record in records:
            last[record["users"], record["spread"]] = record
        table_rows = [
            {
                "users": users,
                "spread": spread,
                "table": name,
                **figures,
                **{k: _percent(figures[k]) for k in ("heap_hit", "index_hit")},
                "shared_buffers": r["shared_buffers"],
            }
            for (users, spread), r in sorted(last.items())
            for name, figures in r["tables"].items()
            if name in ("users", "sessions", "session_messages")
        ]
        self.show(
            "Cost as users grow: table and index sizes, and the share of blocks the turns found"
            " in shared_buffers (last window of each user count)",
            report.table(
                table_rows,
                [
                    ("users", "users"),
                    ("spread", "turns over users"),
                    ("table", "table"),
                    ("heap_mb", "heap MB"),
                    ("index_mb", "indexes MB"),
                    ("toast_mb", "TOAST MB"),
                    ("heap_hit", "heap hit %"),
                    ("index_hit", "index hit %"),
                    ("blocks_read", "blocks read"),
                    ("shared_buffers", "shared_buffers"),
                ],
            ),
        )

    # -- jobs at scale ----------------------------------------------------------------------

    def jobs(self) -> None:
        if not this_store.available():
            self.say("store.Store not importable: jobs at scale skipped")
            return
        args = self.args
        for run in range(args.runs):
            for backlog in args.backlogs:
                for variant in args.variants:
                    self.jobs_run(run, backlog, 0.0, variant)
        for pause in args.job_pauses:
            self.jobs_run(args.runs, args.backlogs[0], pause, "default")
        self.jobs_tables()
        if not args.no_daemon:
            self.jobs_daemon()

    def jobs_backlog(
        self, run: int, backlog: float
    ) -> tuple[str, this_store.StoreDesign, jobs_scale.PacedLoad]:
        """A fresh database with the backlog, and the online load on it (not started)."""
        args = self.args
        scale = jobs_scale.Scale().divided(backlog)
        url = self.server.create_database("skbench_jobs")
        design = this_store.StoreDesign(url)
        users = workload.channel_user_ids(64)
        design.prepare(users)
        t0 = time.perf_counter()
        timings = jobs_scale.seed(url, scale)
        self.say(
            f"run {run + 1} jobs backlog /{backlog:g} seeded in {time.perf_counter() - t0:.1f} s"
        )
        self.rec.add("jobs_seed", run=run, backlog=backlog, scale=scale.__dict__, seconds=timings)
        workers = 4
        design.open(url, workers)
        shares = [workload.assigned(users, workers, w) for w in range(workers)]
        load = jobs_scale.PacedLoad(
            lambda w, i: design.turn(w, shares[w][i % len(shares[w])], i),
            workers,
            args.online_rate,
        )
        return url, design, load

    def jobs_run(self, run: int, backlog: float, pause: float, variant: str) -> None:
        """One run on a fresh database: seed the backlog, then each job under the load."""
        args = self.args
        url, design, load = self.jobs_backlog(run, backlog)
        load.start()
        try:
            runs = jobs_scale.run_jobs(
                url,
                load,
                window=args.window,
                server_pid=self.server.pid,
                pause_seconds=pause,
                jobs=args.jobs,
                overrides=args.variants[variant],
            )
        finally:
            load.stop()
            design.close()
        for job_run in runs:
            record = self.rec.add(
                "jobs",
                run=run,
                backlog=backlog,
                variant=variant,
                online_rate=args.online_rate,
                pause_seconds=pause,
                load_average=report.machine()["load_average"],
                **job_run.record(),
            )
            self.say(
                f"run {run + 1} /{backlog:g} {variant} pause {pause:g} s {record['job']:21} "
                f"{record['rows']:>9,} rows {record['rows_per_s']:>9,} rows/s in "
                f"{record['seconds']} s; online p99 over {record['window_seconds']:g} s"
                f" x{record['window_p99_ratio']} of idle ({record['window_p99_ms']} vs"
                f" {record['window_idle_p99_ms']} ms); longest lock wait"
                f" {record['lock_wait_max_ms']} ms; {record['yields']} yields"
                f" ({record['yielded_seconds']} s)\n"
                f"    online backends idle {record['waits_online_idle']}\n"
                f"    online backends during job {record['waits_online']}\n"
                f"    job backend {record['waits_job']}\n"
                f"    turn mean ms idle {record['idle_mean_ms']} (server "
                f"{record['idle_server_ms']}), during job {record['job_mean_ms']} (server "
                f"{record['job_server_ms']}); CPU pressure idle {record['cpu_pressure_idle']},"
                f" during job {record['cpu_pressure']}; checkpoints {record['checkpoints']},"
                f" autovacuum workers {record['autovacuum_active']}"
            )
        self.server.drop_database("skbench_jobs")

    def jobs_daemon(self) -> None:
        """``sessionkeeper run`` as a process on a fresh backlog, under the online load."""
        url, design, load = self.jobs_backlog(self.args.runs, self.args.backlogs[0])
        # The jobs the daemon runs unless told otherwise (two are off by default).
        enabled = tuple(j for j in self.args.jobs if REGISTRY[j].enabled_by_default)
        load.start()
        try:
            measured = daemon.run(url, enabled)
        finally:
            load.stop()
            design.close()
        record = self.rec.add("jobs_daemon", jobs_scale=self.args.jobs_scale, **measured)
        runs = ", ".join(
            f"{job} {run['outcome']} {run['rows']:,} rows {run['seconds']:.1f} s"
            for job, run in record["runs"].items()
        )
        self.show(
            f"The daemon process on the backlog (/ {self.args.jobs_scale})",
            f"`sessionkeeper run`: peak RSS (VmHWM) {record['daemon_peak_rss_mb']} MB (target"
            f" under 100 MB); {record['daemon_rss_before_jobs_mb']} MB when its first job"
            f" started; a process that only imports it: {record['import_only_rss_mb']} MB."
            f" Runs: {runs}. SIGTERM: exit code {record['exit_code']} after"
            f" {record['stop_seconds']} s.",
        )
        self.server.drop_database("skbench_jobs")

    def jobs_tables(self) -> None:
        args = self.args
        records = self.rec.section("jobs")
        rows = report.medians(
            records,
            ("variant", "pause_seconds", "backlog", "job"),
            (
                "window_seconds",
                "window_idle_p99_ms",
                "window_p99_ms",
                "window_p99_ratio",
                "lock_wait_max_ms",
                "lock_waits",
                "yields",
                "yielded_seconds",
                "rows_per_s_unyielded",
                "rows",
                "rows_incl_messages",
                "seconds",
                "rows_per_s",
                "rows_incl_messages_per_s",
                "online_turns",
                "idle_p99_ms",
                "job_p99_ms",
                "p99_ratio",
                "wal_bytes_per_row",
                "server_cpu_s",
                "idle_mean_ms",
                "idle_server_ms",
                "job_mean_ms",
                "job_server_ms",
                "cpu_pressure_idle",
                "cpu_pressure",
                "checkpoints",
                "autovacuum_active",
            ),
        )
        keys = ("variant", "pause_seconds", "backlog", "job")
        waits = {
            field: report.mean_waits(records, keys, field)
            for field in ("waits", "waits_online_idle", "waits_online", "waits_job")
        }
        for row in rows:
            for field, described in waits.items():
                row[field] = described.get(tuple(row[k] for k in keys), "")
        self.show(
            f"Jobs by windows (online load {args.online_rate:g} turns/s on 4 threads; each job"
            f" at its default settings, yielding as the daemon does; online p99 over a"
            f" {args.window:g} s window from the job's start, or its whole run if longer, against"
            f" the idle {args.window:g} s before it; longest time an online statement waited on"
            f" the job's locks; medians of {args.runs} runs)",
            report.table(
                rows,
                [
                    ("job", "job"),
                    ("backlog", "backlog /"),
                    ("variant", "settings"),
                    ("rows", "rows"),
                    ("seconds", "seconds"),
                    ("rows_per_s", "rows/s"),
                    ("rows_per_s_unyielded", "rows/s without yields"),
                    ("window_seconds", "window s"),
                    ("window_idle_p99_ms", "idle p99 ms"),
                    ("window_p99_ms", "window p99 ms"),
                    ("window_p99_ratio", "x idle"),
                    ("lock_wait_max_ms", "longest lock wait ms"),
                    ("yields", "yields"),
                    ("yielded_seconds", "yielded s"),
                ],
            ),
        )
        self.show(
            f"Jobs during their run alone (release 0.2's figures: the p99 of the turns while"
            f" the job ran against the idle window; medians of {args.runs} runs; with a pause"
            " between batches: one run)",
            report.table(
                rows,
                [
                    ("job", "job"),
                    ("backlog", "backlog /"),
                    ("variant", "settings"),
                    ("pause_seconds", "pause s"),
                    ("rows", "rows"),
                    ("rows_incl_messages", "rows incl. messages"),
                    ("seconds", "seconds"),
                    ("rows_per_s", "rows/s"),
                    ("rows_incl_messages_per_s", "rows/s incl. messages"),
                    ("online_turns", "online turns"),
                    ("idle_p99_ms", "idle p99 ms"),
                    ("job_p99_ms", "p99 during job ms"),
                    ("p99_ratio", "x idle"),
                ],
            ),
        )
        self.show(
            "Jobs at scale: what each run cost the server (WAL per row, server CPU, mean active"
            " backends per wait event, job and online backends together)",
            report.table(
                rows,
                [
                    ("job", "job"),
                    ("backlog", "backlog /"),
                    ("variant", "settings"),
                    ("pause_seconds", "pause s"),
                    ("wal_bytes_per_row", "WAL bytes/row"),
                    ("server_cpu_s", "server CPU s"),
                    ("seconds", "seconds"),
                    ("checkpoints", "checkpoints"),
                    ("autovacuum_active", "autovacuum workers"),
                    ("waits", "active backends by wait"),
                ],
            ),
        )
        self.show(
            "Jobs at scale: where the online turns' time went, idle (the window before the job)"
            " and while the job ran. Mean turn time and its server part (mean active online"
            " backends / turns per second); CPU pressure: share of the time some runnable task"
            " of the machine waited for a CPU (/proc/pressure/cpu); mean active backends per"
            " wait event, the online ones and the job's apart",
            report.table(
                rows,
                [
                    ("job", "job"),
                    ("backlog", "backlog /"),
                    ("variant", "settings"),
                    ("pause_seconds", "pause s"),
                    ("idle_mean_ms", "idle turn ms"),
                    ("idle_server_ms", "idle server ms"),
                    ("job_mean_ms", "turn ms"),
                    ("job_server_ms", "server ms"),
                    ("cpu_pressure_idle", "CPU pressure idle"),
                    ("cpu_pressure", "CPU pressure"),
                    ("waits_online_idle", "online backends idle"),
                    ("waits_online", "online backends"),
                    ("waits_job", "job backend"),
                ],
            ),
        )


def _percent(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 1)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # `kill` and a CI runner's timeout send SIGTERM: unwind, so that the throwaway server stops.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    recorder = report.Recorder(args.out / f"bench-{stamp}.jsonl")
    server = open_server(args.server)
    try:
        facts = server.facts()
        context = {
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "started": stamp,
            "server": server.description,
            "pgbench": str(server.pgbench),
            "settings": facts,
            "machine": report.machine(),
        }
        recorder.add("context", **context)
        print(
            f"server: {server.description}\nPostgreSQL {facts['server_version']}; "
            f"machine: {context['machine']}",
            flush=True,
        )
        bench = Bench(args, server, recorder)
        for section in args.sections:
            getattr(bench, section)()
        for path in plots.draw(recorder.records, args.plots):
            print(f"plot: {path}", flush=True)
        context["finished"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        context["load_average_end"] = report.machine()["load_average"]
        recorder.add("context_end", **context)
        summary = recorder.path.with_suffix(".md")
        summary.write_text(
            f"Command: `{context['command']}`\n\nServer: {server.description}, settings "
            f"{facts}\n\nMachine: {context['machine']}\n\n" + "\n".join(bench.tables)
        )
        print(f"\nrecords: {recorder.path}\ntables: {summary}")
    finally:
        recorder.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
