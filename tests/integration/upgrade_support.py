"""Upgrading a database in use: `sessionkeeper migrate` as a process while bots of release
0.1.0 write through their own statements (tests/fixtures/release-0.1.0)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psycopg

from store.queries import parse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "release-0.1.0"
OLD = parse((FIXTURES / "store_queries.sql").read_text(encoding="utf-8"))

Target = TypeVar("Target")


def migrate_process(url: str, *command: str) -> subprocess.CompletedProcess[str]:
    """``sessionkeeper migrate`` (or another command) as a process on ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "sessionkeeper", *(command or ("migrate",))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def migrate_while_writing(
    url: str,
    write: Callable[[psycopg.Connection[tuple[object, ...]], Target], None],
    targets: Sequence[Target],
    *,
    at_least: int = 20,
    action: Callable[[str], subprocess.CompletedProcess[str]] = migrate_process,
) -> list[int]:
    """Migrate to head (or run another ``action(url)``, a CLI process) while one thread per
    target calls ``write(conn, target)`` in a loop (on its own autocommit connection, at least
    ``at_least`` times); returns how many writes each thread made. Fails if a write or the
    migration failed, or if no write happened while the migration ran."""
    stop, migrating = threading.Event(), threading.Event()
    written: list[int] = []
    during: list[int] = []
    errors: list[BaseException] = []

    def bot(target: Target) -> None:
        done = while_migrating = 0
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop.is_set() or done < at_least:
                    write(conn, target)
                    done += 1
                    while_migrating += migrating.is_set()
        except BaseException as exc:
            errors.append(exc)
        written.append(done)
        during.append(while_migrating)

    threads = [threading.Thread(target=bot, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    try:
        migrating.set()
        result = action(url)
        migrating.clear()
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert result.returncode == 0, result.stderr
    assert errors == [], errors
    assert sum(during) > 0, "no bot wrote while the migration ran"
    return written
