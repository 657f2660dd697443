"""The sessionkeeper daemon and its command line (``sessionkeeper``; ``python scheduler.py``).

``python scheduler.py`` is ``sessionkeeper run``. Without a configured database URL every
command uses the embedded PostgreSQL (store.embedded), starting it when it is not running and
stopping it again on exit if it started it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

import psycopg
import sqlalchemy.exc

from jobs import JOB_NAMES
from store import migrate
from store.connection import configured_database_url, describe, redact, secure_conninfo
from store.embedded import EmbeddedPostgres
from store.errors import StoreError

log = logging.getLogger("sessionkeeper")


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


@dataclass
class Database:
    url: str
    embedded: EmbeddedPostgres | None


@contextlib.contextmanager
def open_database(explicit_url: str | None, *, own_embedded: bool = False) -> Iterator[Database]:
    """The configured database, or the embedded one (started here and stopped on exit)."""
    url = configured_database_url(explicit_url)
    if url is not None:
        yield Database(secure_conninfo(url), None)
        return
    server = EmbeddedPostgres()
    if own_embedded:
        server.acquire_owner_lock()
    try:
        server.start()
        log.info("embedded PostgreSQL in %s", server.data_dir)
        yield Database(server.url("postgres"), server)
    finally:
        server.stop()
        server.release_owner_lock()


def cmd_migrate(args: argparse.Namespace) -> int:
    with open_database(args.database_url) as db:
        before = migrate.current_revision(db.url)
        migrate.upgrade(db.url)
        after = migrate.current_revision(db.url)
    if before == after:
        print(f"database {describe(db.url)} already at {after}")
    else:
        print(f"database {describe(db.url)} migrated from {before or 'empty'} to {after}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    # Handlers only set the event; the main thread does the stopping.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_database(args.database_url, own_embedded=True) as db:
        migrate.upgrade(db.url)
        log.info("sessionkeeper running on %s", describe(db.url))
        stop.wait()
        log.info("sessionkeeper stopping")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with open_database(args.database_url) as db:
        current = migrate.current_revision(db.url)
        head = migrate.head_revision()
        print(f"database: {describe(db.url)}")
        print(f"schema: {current or 'empty'} (head {head}){'' if current == head else ' OUTDATED'}")
    return 0 if current == head else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    for name in JOB_NAMES:
        print(name)
    return 0


def cmd_jobs_run(args: argparse.Namespace) -> int:
    if args.name not in JOB_NAMES:
        raise UsageError(f"unknown job {args.name!r}; jobs: {', '.join(JOB_NAMES)}")
    raise UsageError(f"job {args.name!r} cannot be run yet")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sessionkeeper", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: SESSIONKEEPER_DATABASE_URL, DATABASE_URL, else embedded)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    commands.add_parser("migrate", help="bring the database schema to head").set_defaults(
        func=cmd_migrate
    )
    commands.add_parser("run", help="run the maintenance daemon").set_defaults(func=cmd_run)
    commands.add_parser("status", help="database, schema and last runs").set_defaults(
        func=cmd_status
    )
    jobs = commands.add_parser("jobs", help="list or run maintenance jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=_Parser)
    job_commands.required = True
    job_commands.add_parser("list", help="list the jobs").set_defaults(func=cmd_jobs_list)
    run_one = job_commands.add_parser("run", help="run one job now")
    run_one.add_argument("name", help="job name: " + ", ".join(JOB_NAMES))
    run_one.set_defaults(func=cmd_jobs_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        return int(args.func(args))
    except UsageError as exc:
        message = str(exc)
        print(
            message if message.startswith("sessionkeeper") else f"sessionkeeper: {message}",
            file=sys.stderr,
        )
        return 2
    except StoreError as exc:
        print(f"sessionkeeper: {redact(str(exc))}", file=sys.stderr)
        return 1
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"sessionkeeper: database unavailable: {redact(reason)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["run"]))
