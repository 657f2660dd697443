"""The jobs benchmark's windows (bench/jobs_scale.py): which turns each p99 is taken over."""

from __future__ import annotations

from bench.harness import ServerDelta
from bench.jobs_scale import JobRun


def server() -> ServerDelta:
    return ServerDelta(wal_bytes=0, cpu_seconds=None, waits={}, machine_busy_seconds=0.0)


def run(seconds: float, turns: list[tuple[float, float]]) -> JobRun:
    return JobRun(
        "usage_rollup",
        rows=1000,
        seconds=seconds,
        details={},
        turns=turns,
        window=10.0,
        server=server(),
        idle_server=server(),
        yields=[(1.0, 0.1), (2.0, 0.2)],
        lock_waits=[(0.5, 5.0), (0.7, 12.5)],
    )


# 100 turns a second: 2 ms idle, 4 ms while the job runs (its first 2 s), 3 ms after it.
TURNS = [(t / 100, 2.0 if t < 0 else 4.0 if t < 200 else 3.0) for t in range(-1000, 1500)]


def test_the_job_window_starts_with_the_job_and_lasts_the_window() -> None:
    record = run(2.0, TURNS).record()
    assert record["window_idle_turns"] == 1000
    assert record["window_turns"] == 1000  # 0 to 10 s; the turns after it are not counted
    assert record["window_idle_p99_ms"] == 2.0
    assert record["window_p99_ms"] == 4.0
    assert record["window_p99_ratio"] == 2.0
    # Release 0.2's keys: the job's run alone.
    assert record["online_turns"] == 200
    assert record["p99_ratio"] == 2.0


def test_a_job_longer_than_the_window_is_its_own_window() -> None:
    record = run(12.0, TURNS).record()
    assert record["window_seconds"] == 12.0
    assert record["window_turns"] == 1200


def test_lock_waits_and_yields_are_summed_up() -> None:
    record = run(2.0, TURNS).record()
    assert record["lock_wait_max_ms"] == 12.5
    assert record["lock_waits"] == 2
    assert record["yields"] == 2
    assert record["yielded_seconds"] == 0.3
    assert record["rows_per_s_unyielded"] == round(1000 / 1.7)
