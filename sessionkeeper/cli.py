"""The sessionkeeper command line (``sessionkeeper``, ``python -m sessionkeeper``).

``python scheduler.py`` in a checkout is the same command, and ``sessionkeeper run`` without
arguments. Without a configured database URL every
command uses the embedded PostgreSQL (sessionkeeper.admin.embedded), starting it when it is not
running and stopping it again on exit if it started it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

import psycopg
import sqlalchemy.exc

from sessionkeeper.admin import citus, embedded, legacy, migrate, roles
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.daemon.config import Config, load_config
from sessionkeeper.daemon.logs import log_run, setup_logging
from sessionkeeper.daemon.service import Daemon, job_conninfo
from sessionkeeper.jobs import JOB_NAMES, ledger, session_archival
from sessionkeeper.jobs.runner import JobFailed, run_job
from store import InvalidInput, Store
from store.connection import configured_database_url, describe, redact, secure_conninfo
from store.errors import StoreError

log = logging.getLogger("sessionkeeper")

# The database the daemon uses on the embedded server (not the "postgres" maintenance one).
EMBEDDED_DATABASE = "sessionkeeper"


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
    embedded.require_installed()
    server = EmbeddedPostgres()
    if own_embedded:
        server.acquire_owner_lock()
    try:
        server.start()
        log.info("embedded PostgreSQL in %s", server.data_dir)
        yield Database(server.ensure_database(EMBEDDED_DATABASE), server)
    finally:
        server.stop()
        server.release_owner_lock()


def cmd_migrate(args: argparse.Namespace) -> int:
    options = legacy.ConversionOptions(
        batch_size=args.batch_size, max_batches=args.max_batches, time_zone=args.legacy_time_zone
    )
    with open_database(args.database_url) as db:
        if args.dry_run:
            print(f"database {describe(db.url)} (dry run, nothing changed)")
            for line in legacy.plan(db.url, options):
                print(line)
            return 0
        before = migrate.current_revision(db.url)
        # Adopts and converts a TypeScript-era database; a plain upgrade otherwise.
        legacy.upgrade(db.url, options, report=lambda line: print(line, flush=True))
        after = migrate.current_revision(db.url)
    if before == after:
        print(f"database {describe(db.url)} already at {after}")
    else:
        print(f"database {describe(db.url)} migrated from {before or 'empty'} to {after}")
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    # Handlers only set the event; the main thread does the stopping.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def cmd_run(args: argparse.Namespace) -> int:
    config: Config = args.config
    stop = _stop_on_signals()
    with open_database(args.database_url, own_embedded=True) as db:
        if config.migrate_on_start:
            migrate.upgrade(db.url)
        daemon = Daemon(config, db.url, migrate.head_revision())
        daemon.start()
        try:
            log.info("sessionkeeper running on %s as %s", describe(db.url), config.replica_id)
            stop.wait()
            log.info("sessionkeeper stopping")
        finally:
            daemon.stop()
        log.info("sessionkeeper stopped")
    return 0


def _last_runs(url: str) -> dict[str, ledger.LedgerRow]:
    with psycopg.connect(url, autocommit=True) as conn:
        return ledger.last_runs(conn, JOB_NAMES)


def _describe_run(run: ledger.LedgerRow | None) -> str:
    if run is None:
        return "never run"
    text = f"{run.outcome} {run.started_at:%Y-%m-%d %H:%M:%S%z} rows={run.rows} ({run.replica_id})"
    return f"{text} {run.error}" if run.error else text


def cmd_status(args: argparse.Namespace) -> int:
    with open_database(args.database_url) as db:
        current = migrate.current_revision(db.url)
        head = migrate.head_revision()
        print(f"database: {describe(db.url)}")
        print(f"schema: {current or 'empty'} (head {head}){'' if current == head else ' OUTDATED'}")
        if current == head:
            runs = _last_runs(db.url)
            for name in JOB_NAMES:
                print(f"{name}: {_describe_run(runs.get(name))}")
    return 0 if current == head else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    config: Config = args.config
    with open_database(args.database_url) as db:
        try:
            runs: dict[str, ledger.LedgerRow] | None = _last_runs(db.url)
        except psycopg.Error as exc:
            log.warning("last runs unknown: %s", redact(str(exc).strip().splitlines()[0]))
            runs = None
    now = datetime.now(UTC)
    print(f"{'JOB':<20} {'SCHEDULE':<20} {'NEXT RUN (UTC)':<20} LAST RUN")
    for name, job in config.jobs.items():
        next_run = job.schedule.trigger(0).get_next_fire_time(None, now)
        when = f"{next_run:%Y-%m-%d %H:%M:%S}" if job.enabled and next_run else "disabled"
        last = "unknown" if runs is None else _describe_run(runs.get(name))
        print(f"{name:<20} {job.schedule.describe():<20} {when:<20} {last}")
    return 0


# Exit codes of `jobs run`: the run's outcome.
RUN_EXIT_CODES = {"success": 0, "failure": 1, "skipped": 3}


def cmd_jobs_run(args: argparse.Namespace) -> int:
    if args.name not in JOB_NAMES:
        raise UsageError(f"unknown job {args.name!r}; jobs: {', '.join(JOB_NAMES)}")
    config: Config = args.config
    stop = _stop_on_signals()
    with open_database(args.database_url) as db:
        conninfo = job_conninfo(db.url, config)
        try:
            report = run_job(
                lambda: psycopg.connect(conninfo, autocommit=True),
                args.name,
                config.jobs[args.name].settings,
                replica_id=config.replica_id,
                pause=stop.wait,
                ledger_keep_seconds=config.ledger_retention_seconds,
                store=config.store,
            )
        except JobFailed as exc:
            report = exc.report
    log_run(report, config.replica_id)
    line = f"{report.job}: {report.outcome} rows={report.rows} {report.duration_seconds:.3f}s"
    print(f"{line} ({report.error})" if report.error else line)
    return RUN_EXIT_CODES[report.outcome]


def cmd_sessions_restore(args: argparse.Namespace) -> int:
    try:
        session_id = uuid.UUID(args.session_id)
    except ValueError:
        raise UsageError(f"not a session id: {args.session_id!r}") from None
    with open_database(args.database_url) as db, psycopg.connect(db.url, autocommit=True) as conn:
        restored = session_archival.restore(
            conn, session_id, datetime.now(UTC), make_current=args.make_current
        )
    current = " and made current" if args.make_current else ""
    print(f"session {session_id} restored with {restored} messages{current}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    what = f"user {args.user}" if args.user else f"person {args.person}"
    with (
        open_database(args.database_url) as db,
        Store(db.url, min_size=0, statement_timeout_ms=None) as store,
    ):
        try:
            if args.user:
                forgotten = store.forget_user(args.user)
            else:
                forgotten = store.forget_person(args.person)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    print(f"forgot {what}:")
    for line in forgotten.lines():
        print(f"  {line}")
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    with open_database(args.database_url) as db, Store(db.url, min_size=0) as store:
        try:
            unlinked = store.unlink(args.user)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    if unlinked.person_id is None:
        print(f"user {unlinked.user_id} was not linked to a person")
    else:
        gone = " (its last user: the person was deleted)" if unlinked.person_deleted else ""
        print(f"user {unlinked.user_id} left person {unlinked.person_id}{gone}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with (
        open_database(args.database_url) as db,
        Store(db.url, min_size=0, statement_timeout_ms=None) as store,
    ):
        try:
            if args.user:
                store.export_user(args.user, sys.stdout)
            else:
                store.export_person(args.person, sys.stdout)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    sys.stdout.flush()
    return 0


def cmd_citus_ddl(args: argparse.Namespace) -> int:
    # No database: the DDL is derived from the schema (see docs/scaling.md).
    print(citus.ddl(), end="")
    return 0


def _log_level(name: str) -> str:
    """A level name logging knows (``--log-level``), so that a typo is a usage error."""
    if not isinstance(logging.getLevelName(name.upper()), int):
        raise argparse.ArgumentTypeError(f"unknown logging level {name!r}")
    return name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sessionkeeper", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: SESSIONKEEPER_DATABASE_URL, DATABASE_URL, else embedded)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=_log_level,
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or one JSON object per line (default: SESSIONKEEPER_LOG_FORMAT, else text)",
    )
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="TOML configuration file (default: SESSIONKEEPER_CONFIG); the environment wins",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    migrate_parser = commands.add_parser(
        "migrate",
        help="bring the database schema to head (adopts a TypeScript-era database in place)",
    )
    migrate_parser.add_argument(
        "--dry-run", action="store_true", help="report what would be done, change nothing"
    )
    migrate_parser.add_argument(
        "--batch-size",
        type=int,
        default=legacy.DEFAULT_BATCH_SIZE,
        help="legacy sessions converted per transaction (default %(default)s)",
    )
    migrate_parser.add_argument(
        "--max-batches",
        type=int,
        metavar="N",
        help="stop the legacy conversion after N batches; a later migrate continues",
    )
    migrate_parser.add_argument(
        "--legacy-time-zone",
        default="UTC",
        metavar="ZONE",
        help="zone the TypeScript store's TIMESTAMP columns were written in (default UTC)",
    )
    migrate_parser.set_defaults(func=cmd_migrate)
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
    sessions = commands.add_parser("sessions", help="archived sessions")
    session_commands = sessions.add_subparsers(
        dest="sessions_command", metavar="ACTION", parser_class=_Parser
    )
    session_commands.required = True
    restore = session_commands.add_parser("restore", help="bring an archived session back")
    restore.add_argument("session_id", metavar="ID", help="the session id (a UUID)")
    restore.add_argument(
        "--make-current",
        action="store_true",
        help="set its last activity to now, so the user's next turn continues it"
        " (default: it keeps its last activity and the user's current session stays current)",
    )
    restore.set_defaults(func=cmd_sessions_restore)
    forget = commands.add_parser(
        "forget", help="erase a user or a person and everything the store holds about them"
    )
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="a user id (UUID)")
    who.add_argument("--person", metavar="ID", help="a person id (UUID): all its users")
    forget.set_defaults(func=cmd_forget)
    unlink = commands.add_parser(
        "unlink", help="a user leaves its person (the person goes with its last user)"
    )
    unlink.add_argument("--user", metavar="ID", required=True, help="a user id (UUID)")
    unlink.set_defaults(func=cmd_unlink)
    export = commands.add_parser(
        "export",
        help="write everything the store holds about a user or a person as JSON to stdout",
    )
    subject = export.add_mutually_exclusive_group(required=True)
    subject.add_argument("--user", metavar="ID", help="a user id (UUID)")
    subject.add_argument("--person", metavar="ID", help="a person id (UUID): all its users")
    export.set_defaults(func=cmd_export)
    commands.add_parser(
        "citus-ddl", help="print the SQL that distributes the schema over Citus (no database)"
    ).set_defaults(func=cmd_citus_ddl)
    roles.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_level, args.log_format or "text")
        args.config = load_config(config_file=args.config_file)
        if args.log_format is None and args.config.log_format != "text":
            setup_logging(args.log_level, args.config.log_format)
        # Precedence: --database-url, the environment, the configuration file, embedded.
        args.database_url = args.database_url or args.config.database_url
        return int(args.func(args))
    except UsageError as exc:
        message = str(exc)
        _complain(message if message.startswith("sessionkeeper") else f"sessionkeeper: {message}")
        return 2
    except StoreError as exc:
        _complain(f"sessionkeeper: {redact(str(exc))}")
        return 1
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _complain(f"sessionkeeper: database unavailable: {redact(reason)}")
        return 1


def _complain(message: str) -> None:
    """One line on stderr, whatever the message quotes (an argument may hold a line break)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())
    print(shown, file=sys.stderr)
