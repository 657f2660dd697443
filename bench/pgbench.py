"""The machine's ceiling: pgbench's built-in tpcb-like and select-only scripts.

Run with the server's own pgbench where there is one (Debian's for PostgreSQL 15, the wheel's
for the embedded server), on a database of its own initialised at ``scale``, with the default
simple query protocol, ``-c`` clients and ``-j min(clients, CPUs)`` threads.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

BUILTINS = {"tpcb-like": [], "select-only": ["-S"]}
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def initialise(pgbench: Path, conninfo: str, scale: int) -> None:
    _run([str(pgbench), "-i", "-q", "-s", str(scale), conninfo])


def tps(pgbench: Path, conninfo: str, script: str, clients: int, seconds: float) -> float:
    """Transactions per second pgbench reports (without initial connection time)."""
    threads = min(clients, os.cpu_count() or 1)
    output = _run(
        [
            str(pgbench),
            *BUILTINS[script],
            "-n",  # no vacuum before the run: the tables are fresh and the runs are short
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(max(1, round(seconds))),
            conninfo,
        ]
    )
    match = _TPS.search(output)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()}")
    return result.stdout
