"""The benchmark's pictures (bench/plots.py) from a small result set: data, no database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import plots  # matplotlib: in the bench and test extras

PNG = b"\x89PNG\r\n\x1a\n"


def job_record(job: str, backlog: float, run: int, ratio: float) -> dict[str, Any]:
    # 100 turns/s for 6 s: 3 s idle, then the job's 3 s window; one yield, one lock wait.
    timeline = [[-3 + i / 100, 2.0 + (i % 7) * 0.3] for i in range(600)]
    return {
        "section": "jobs",
        "job": job,
        "backlog": backlog,
        "run": run,
        "variant": "default",
        "pause_seconds": 0.0,
        "rows": 1000,
        "seconds": 1.5,
        "window_seconds": 3.0,
        "window_p99_ms": 4.0 * ratio,
        "window_idle_p99_ms": 4.0,
        "window_p99_ratio": ratio,
        "timeline": timeline,
        "yield_marks": [[0.7, 0.1]],
        "lock_marks": [[0.2, 3.5]],
    }


def scale_record(users: int, workers: int) -> dict[str, Any]:
    return {
        "section": "scale",
        "users": users,
        "workers": workers,
        "ops_per_s": 300.0 * workers**0.5,
        "client_cpu_ms_per_op": 0.4,
        "server_cpu_ms_per_op": 0.8 if users < 10_000 else 0.9,
    }


RECORDS = [
    *(
        job_record(job, b, run, r)
        for job, r in (("session_archival", 1.05), ("usage_rollup", 1.2))
        for b in (1.0, 10.0)
        for run in range(3)
    ),
    *(scale_record(users, w) for users in (1000, 1_000_000) for w in (1, 4, 16)),
    {"section": "context", "command": "python -m bench"},
]


def test_draws_a_png_per_job_and_backlog_plus_the_summaries(tmp_path: Path) -> None:
    paths = plots.draw(RECORDS, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "hotpath-users-workers.png",
        "job-session_archival-backlog1.png",
        "job-session_archival-backlog10.png",
        "job-usage_rollup-backlog1.png",
        "job-usage_rollup-backlog10.png",
        "jobs-window-ratios.png",
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG)
        assert path.stat().st_size > 5_000


def test_the_same_records_draw_the_same_bytes(tmp_path: Path) -> None:
    first = plots.draw(RECORDS, tmp_path / "a")
    second = plots.draw(RECORDS, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_the_median_run_is_drawn() -> None:
    runs = [job_record("usage_rollup", 1.0, run, ratio) for run, ratio in enumerate((3, 1, 2))]
    (chosen,) = plots.representative(runs)
    assert chosen["window_p99_ratio"] == 2


def test_redraws_from_a_records_file(tmp_path: Path) -> None:
    records = tmp_path / "bench.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert plots.main([str(records), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "jobs-window-ratios.png").read_bytes().startswith(PNG)
