"""Pictures of a bench run (PNG, matplotlib's Agg backend: no display, the same bytes for the
same records): for each job the online latency over time with the job's span, its yields and
any lock waits marked; the window ratios of every job against the target; and turns/s and CPU
per turn against workers, for each user count of the scale section.

``python -m bench`` draws them at the end of a run; ``python -m bench.plots RECORDS.jsonl``
draws them again from a run's records.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after choosing the backend
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

PLOTS_DIR = Path(__file__).resolve().parent / "plots"
TARGET_RATIO = 1.1
# No software version or date in the files: the same records give the same bytes.
METADATA = {"Software": None}


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata=METADATA)
    plt.close(figure)
    return path


def _p99_per_second(timeline: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """The p99 of the turns started in each second (the middle of the second, the p99)."""
    bins: dict[int, list[float]] = {}
    for t, ms in timeline:
        bins.setdefault(int(t // 1), []).append(ms)
    seconds = sorted(bins)
    p99 = []
    for second in seconds:
        values = sorted(bins[second])
        p99.append(values[min(len(values) - 1, int(0.99 * len(values)))])
    return [s + 0.5 for s in seconds], p99


def job_timeline(record: dict[str, Any], path: Path) -> Path:
    """One job run: every online turn's latency against time, the job's span shaded."""
    timeline = record["timeline"]
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.scatter(
        [t for t, _ in timeline], [ms for _, ms in timeline], s=2, color="#888888", label="turn"
    )
    centres, p99 = _p99_per_second(timeline)
    axis.plot(centres, p99, color="#1f77b4", linewidth=1.2, label="p99 per second")
    axis.axvspan(0, record["seconds"], color="#ff7f0e", alpha=0.2, label="job running")
    axis.axvline(record["window_seconds"], color="#ff7f0e", linestyle=":", linewidth=1)
    axis.axvline(0, color="#ff7f0e", linestyle=":", linewidth=1)
    top = max((ms for _, ms in timeline), default=1.0)
    for i, (t, _extra) in enumerate(record.get("yield_marks", [])):
        axis.axvline(
            t, color="#2ca02c", linewidth=0.6, alpha=0.7, label="pacer yields" if i == 0 else None
        )
    marks = record.get("lock_marks", [])
    if marks:
        axis.scatter(
            [t for t, _ in marks],
            [ms for _, ms in marks],
            marker="x",
            color="#d62728",
            label="online wait on the job's lock (ms)",
        )
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(ScalarFormatter())
    axis.set_ylim(top=top * 1.5)
    axis.set_xlabel("seconds from the job's start (before 0: the idle window)")
    axis.set_ylabel("online turn latency, ms")
    axis.set_title(
        f"{record['job']}, backlog /{record.get('backlog', 1):g}: window p99"
        f" {record['window_p99_ms']:.1f} ms vs idle {record['window_idle_p99_ms']:.1f} ms"
        f" (x{record['window_p99_ratio']}), {record['rows']:,} rows in {record['seconds']:.1f} s"
    )
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def job_ratios(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every job's window p99 ratio (median over runs) per backlog, and the 1.1 target."""
    jobs = list(dict.fromkeys(r["job"] for r in records))
    backlogs = sorted({r.get("backlog", 1) for r in records})
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(backlogs), 1)
    for b, backlog in enumerate(backlogs):
        ratios = []
        for job in jobs:
            values = [
                r["window_p99_ratio"]
                for r in records
                if r["job"] == job
                and r.get("backlog", 1) == backlog
                and r.get("window_p99_ratio") is not None
            ]
            ratios.append(statistics.median(values) if values else 0.0)
        axis.bar(
            [i + b * width for i in range(len(jobs))], ratios, width, label=f"backlog /{backlog:g}"
        )
    axis.axhline(TARGET_RATIO, color="#d62728", linestyle="--", label=f"target x{TARGET_RATIO}")
    axis.set_xticks([i + width * (len(backlogs) - 1) / 2 for i in range(len(jobs))])
    axis.set_xticklabels(jobs, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("online p99, job's window / idle window")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def users_and_workers(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Turns/s and CPU per turn against workers, one line per user count (medians)."""
    figure, (rate, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    spreads = sorted({(r["users"], r.get("spread", r["users"])) for r in records})
    for users, spread in spreads:
        mine = [r for r in records if (r["users"], r.get("spread", users)) == (users, spread)]
        workers = sorted({r["workers"] for r in mine})

        def med(key: str, w: int, rows: list[dict[str, Any]] = mine) -> float:
            values = [r[key] or 0.0 for r in rows if r["workers"] == w]
            return statistics.median(values) if values else 0.0

        label = f"{users:,} users" + (f", turns over {spread:,}" if spread != users else "")
        rate.plot(workers, [med("ops_per_s", w) for w in workers], marker="o", label=label)
        total = [med("client_cpu_ms_per_op", w) + med("server_cpu_ms_per_op", w) for w in workers]
        line = cpu.plot(workers, total, marker="o", label=f"{label}, client + server")[0]
        cpu.plot(
            workers,
            [med("server_cpu_ms_per_op", w) for w in workers],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{label}, server",
        )
    every = sorted({r["workers"] for r in records})
    for axis, ylabel in ((rate, "turns/s"), (cpu, "CPU ms per turn")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(every)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("workers")
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    rate.set_title("Turns per second")
    cpu.set_title("CPU per turn")
    figure.tight_layout()
    return _save(figure, path)


def representative(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per job and backlog, the default-settings run whose window ratio is the median one."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("variant", "default") != "default" or record.get("pause_seconds", 0):
            continue
        groups.setdefault((record["job"], record.get("backlog", 1)), []).append(record)
    chosen = []
    for group in groups.values():
        group.sort(key=lambda r: r.get("window_p99_ratio") or 0.0)
        chosen.append(group[(len(group) - 1) // 2])
    return chosen


def draw(records: Iterable[dict[str, Any]], directory: Path = PLOTS_DIR) -> list[Path]:
    """Every picture the records allow, in ``directory``; returns their paths."""
    records = list(records)
    jobs = [r for r in records if r.get("section") == "jobs" and "timeline" in r]
    scale = [r for r in records if r.get("section") == "scale"]
    paths = []
    for record in representative(jobs):
        name = f"job-{record['job']}-backlog{record.get('backlog', 1):g}.png"
        paths.append(job_timeline(record, directory / name))
    if jobs:
        paths.append(job_ratios(representative(jobs), directory / "jobs-window-ratios.png"))
    if scale:
        paths.append(users_and_workers(scale, directory / "hotpath-users-workers.png"))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("records", type=Path, nargs="+", help="bench/out/bench-*.jsonl files")
    parser.add_argument("--out", type=Path, default=PLOTS_DIR, help="where the PNGs go")
    args = parser.parse_args(argv)
    records = [
        json.loads(line)
        for path in args.records
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    for path in draw(records, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
