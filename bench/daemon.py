"""The real daemon on the jobs backlog: ``sessionkeeper run`` as a process, and its peak memory.

The daemon is started as operators start it (``sessionkeeper run``, with its migration on
start, metrics endpoint, pool, gauges and every job enabled by default), except that the jobs
the bench times are scheduled every ``every`` seconds without jitter so that they run at once.
It runs until each of them has recorded a successful run in the ledger (each run works its
whole backlog off), then gets SIGTERM. Its peak resident memory is the kernel's high-water
mark (``VmHWM`` in /proc/<pid>/status) read just before the SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import IO, Any

import psycopg

from store.settings import variable

LEDGER = """
SELECT DISTINCT ON (job) job, outcome, rows, extract(epoch FROM finished_at - started_at)
FROM job_runs
WHERE job = ANY(%s) AND started_at >= %s AND outcome <> 'running'
ORDER BY job, started_at
"""


def status_mb(pid: int, field: str) -> float | None:
    """A memory figure of /proc/<pid>/status (VmHWM, VmRSS), in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def import_rss_mb() -> float | None:
    """Peak memory of a Python process that only imports the daemon's command line."""
    probe = "import sessionkeeper.cli; print(open('/proc/self/status').read())"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def run(
    conninfo: str, jobs: tuple[str, ...], every: int = 2, timeout: float = 900
) -> dict[str, Any]:
    """Run the daemon until each of ``jobs`` has run once; returns what it measured."""
    env = {
        **os.environ,
        "SESSIONKEEPER_DATABASE_URL": conninfo,
        "SESSIONKEEPER_METRICS_PORT": "0",
        "SESSIONKEEPER_LOG_FORMAT": "json",
    }
    for job in jobs:
        env[variable(("jobs", job, "schedule"))] = f"{every}s"
        env[variable(("jobs", job, "jitter_seconds"))] = "0"
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "sessionkeeper", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        try:
            measured = _watch(daemon, log, conninfo, jobs, started, timeout)
            daemon.send_signal(signal.SIGTERM)
            t_stop = time.perf_counter()
            code = daemon.wait(timeout=120)
            stop_seconds = time.perf_counter() - t_stop
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    return {
        **measured,
        "import_only_rss_mb": import_rss_mb(),
        "exit_code": code,
        "stop_seconds": round(stop_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _watch(
    daemon: subprocess.Popen[str],
    log: IO[str],
    conninfo: str,
    jobs: tuple[str, ...],
    started: datetime,
    timeout: float,
) -> dict[str, Any]:
    """Wait for a finished run of each job in the ledger; the daemon's memory meanwhile."""
    t0 = time.perf_counter()
    before_jobs: float | None = None
    largest_rss = 0.0
    runs: dict[str, dict[str, Any]] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while len(runs) < len(jobs):
            if daemon.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the daemon exited early: {log.read()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the daemon ran {timeout:g} s without running {jobs}")
            largest_rss = max(largest_rss, status_mb(daemon.pid, "VmRSS") or 0.0)
            any_run = conn.execute(
                "SELECT count(*) FROM job_runs WHERE started_at >= %s", (started,)
            ).fetchone()
            if before_jobs is None and any_run and any_run[0]:
                before_jobs = status_mb(daemon.pid, "VmHWM")
            for job, outcome, rows, seconds in conn.execute(LEDGER, (list(jobs), started)):
                runs[job] = {"outcome": outcome, "rows": rows, "seconds": float(seconds)}
            time.sleep(0.2)
    return {
        "daemon_peak_rss_mb": status_mb(daemon.pid, "VmHWM"),
        "daemon_rss_before_jobs_mb": before_jobs,
        "daemon_largest_sampled_rss_mb": largest_rss,
        "runs": runs,
    }
