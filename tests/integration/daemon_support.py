"""What the tests that start the daemon as a process share (tests/integration/test_daemon.py,
tests/integration/test_prometheus_live.py)."""

from __future__ import annotations

import os

from sessionkeeper.jobs import JOB_NAMES


def daemon_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment for ``python -m sessionkeeper run`` on ``database_url``: this process's
    environment without any ``SESSIONKEEPER_*`` setting or ``DATABASE_URL`` of its own, metrics
    on a free loopback port (logged at start-up), domain gauges counted every second, no jitter;
    then ``settings`` (``SESSIONKEEPER_*`` variables) over that."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONKEEPER_") and k != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=database_url,
        SESSIONKEEPER_METRICS_HOST="127.0.0.1",
        SESSIONKEEPER_METRICS_PORT="0",
        SESSIONKEEPER_GAUGE_INTERVAL_SECONDS="1",
    )
    for name in JOB_NAMES:
        env[f"SESSIONKEEPER_{name.upper()}_JITTER_SECONDS"] = "0"
    env.update(settings)
    return env


def every_job(schedule: str) -> dict[str, str]:
    """``SESSIONKEEPER_<JOB>_SCHEDULE`` for every job, each enabled (user_retention is off by
    default)."""
    return {
        f"SESSIONKEEPER_{name.upper()}_{key}": value
        for name in JOB_NAMES
        for key, value in (("SCHEDULE", schedule), ("ENABLED", "true"))
    }
