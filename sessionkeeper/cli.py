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
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import IO, Any, NoReturn

import psycopg
import psycopg.conninfo
import sqlalchemy.exc

from sessionkeeper.admin import citus, embedded, legacy, migrate, roles
from sessionkeeper.admin.embedded import EmbeddedPostgres
from sessionkeeper.daemon.config import Config, JobConfig, load_config, settings_reference
from sessionkeeper.daemon.logs import log_run, setup_logging
from sessionkeeper.daemon.service import Daemon, job_conninfo
from sessionkeeper.jobs import JOB_NAMES, ledger, partitions, session_archival
from sessionkeeper.jobs.runner import WINDOW_CLOSED, JobFailed, run_job
from sessionkeeper.progress import Progress, write
from store import Forgotten, InvalidInput, NotFound, Store, local_server
from store.connection import describe, redact, secure_conninfo
from store.errors import ConfigurationError, StoreError

log = logging.getLogger("sessionkeeper")

# The database the daemon uses on the embedded server (not the "postgres" maintenance one).
EMBEDDED_DATABASE = local_server.DATABASE


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


@dataclass
class Database:
    url: str
    embedded: EmbeddedPostgres | None


def _checked(url: str) -> str:
    """``url`` made secure (store.connection), its connect_timeout checked: psycopg would only
    refuse a bad one on each connection attempt, from inside a pool, until the pool times out."""
    conninfo = secure_conninfo(url)  # refuses what libpq cannot parse
    try:
        psycopg.conninfo.timeout_from_conninfo(psycopg.conninfo.conninfo_to_dict(conninfo))
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"invalid database URL {redact(url)}: {_first_line(exc)}"
        ) from None
    return conninfo


@contextlib.contextmanager
def open_database(url: str | None, *, own_embedded: bool = False) -> Iterator[Database]:
    """The database at ``url`` (resolved by ``main``), else the embedded one (started here
    and stopped on exit)."""
    if url is not None:
        yield Database(_checked(url), None)
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


class Stop:
    """SIGINT and SIGTERM ask long work to stop at its next batch boundary. The handlers only
    set the event (the main thread does the stopping); unless ``patient`` (the daemon, whose
    shutdown must finish), a second Ctrl-C aborts at once."""

    def __init__(self, *, patient: bool = False) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.patient = patient
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if not self.patient and self.signum == signal.SIGINT == signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.event.set()
        if signum == signal.SIGINT and not self.patient and sys.stderr.isatty():
            print("\nstopping after the current batch (Ctrl-C again to abort)", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as shells report a process a signal ended (130: Ctrl-C)."""
        return 128 + (self.signum or signal.SIGINT)


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
        stop = Stop()
        # Adopts and converts a TypeScript-era database; a plain upgrade otherwise. A stop
        # request ends the conversion between two batches (each is its own transaction).
        with contextlib.ExitStack() as bars:
            shown: dict[str, Progress] = {}

            def progress(what: str, done: int, total: int | None) -> None:
                if what not in shown:
                    shown[what] = bars.enter_context(Progress(what, total=total))
                shown[what].set_total(total)
                shown[what].update(done)

            legacy.upgrade(db.url, options, write, progress=progress, stop=stop.event.is_set)
        after = migrate.current_revision(db.url)
        if stop.signum is None:
            ahead, code = _partitions_ahead(db.url, args.config)
    if stop.signum is not None:
        print(f"database {describe(db.url)} at {after}; interrupted: run migrate again to finish")
        return stop.exit_code
    if before == after:
        print(f"database {describe(db.url)} already at {after}")
    else:
        print(f"database {describe(db.url)} migrated from {before or 'empty'} to {after}")
    print(ahead, file=sys.stderr if code else sys.stdout)
    return code


def _partitions_ahead(url: str, config: Config) -> tuple[str, int]:
    """partition_maintenance, run once at the end of every migrate (the daemon's job, with its
    lock, ledger and settings), so that a deployment that migrates at every start has its
    partitions made ahead even while no daemon runs. A line to print and the exit code: a role
    that may not make partitions fails nothing (the daemon makes them); an error of the job
    does, the schema staying migrated."""
    job = config.jobs["partition_maintenance"]
    if not job.enabled:
        return "partitions ahead: none made (partition_maintenance is disabled)", 0
    conninfo = job_conninfo(url, config)

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(conninfo, autocommit=True)
        # As the revisions ran: as the owner role when this login may take it (docs/roles.md).
        roles.assume_owner(conn)
        return conn

    with connect() as conn:
        refused = partitions.ddl_refused(conn)
        role = conn.execute("SELECT current_user").fetchone()
    not_made = "partitions ahead not made"
    advice = "the daemon's partition_maintenance makes them, or run migrate as their owner"
    if refused:
        who = role[0] if role else "?"
        return (
            f"{not_made}: role {who} may not create partitions of {' and '.join(refused)}"
            f" (only their owner's role may); {advice} (docs/roles.md)",
            0,
        )
    try:
        report = run_job(
            connect,
            "partition_maintenance",
            job.settings,
            replica_id=config.replica_id,
            ledger_keep_seconds=config.ledger_retention_seconds,
            store=config.store,
        )
    except JobFailed as exc:
        if isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
            return f"{not_made}: {exc.report.error}; {advice}", 0
        return f"{not_made} (the schema is migrated): {exc.report.error}", 1
    if report.outcome == "skipped":
        return "partitions ahead: partition_maintenance is running elsewhere (skipped)", 0
    details = report.details
    lead = ", ".join(f"{table} {count}" for table, count in details["ahead"].items())
    return (
        f"partitions ahead (partition_maintenance, ahead={job.settings.ahead}):"
        f" {details['created']} made, {details['deferred']} deferred; now ahead: {lead}",
        0,
    )


def cmd_run(args: argparse.Namespace) -> int:
    config: Config = args.config
    stop = Stop(patient=True)
    with open_database(args.database_url, own_embedded=True) as db:
        if config.migrate_on_start:
            migrate.upgrade(db.url)
            # As `migrate` does: a daemon started after days down finds the partitions of now
            # missing, and the bots' writes would fail until the job's next slot.
            ahead, code = _partitions_ahead(db.url, config)
            (log.warning if code else log.info)("%s", ahead)
        daemon = Daemon(config, db.url, migrate.head_revision())
        daemon.start()
        try:
            log.info("sessionkeeper running on %s as %s", describe(db.url), config.replica_id)
            stop.event.wait()
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
    text = f"{text} {run.error}" if run.error else text
    details = run.details or {}
    if "slots_skipped" in details:
        # A closed window's one row (ledger.window_skipped): how long it has waited so far.
        last = datetime.fromisoformat(details["last_slot"])
        opens = datetime.fromisoformat(details["window_opens"])
        text += (
            f", {details['slots_skipped']} slots skipped to {last:%Y-%m-%d %H:%M:%S%z},"
            f" opens {opens:%Y-%m-%d %H:%M:%S%z}"
        )
    return text


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
            log.warning("last runs unknown: %s", _first_line(exc))
            runs = None
    now = datetime.now(UTC)
    schedules = {
        name: f"{job.schedule.describe()}, in {job.window}"
        if job.window
        else job.schedule.describe()
        for name, job in config.jobs.items()
    }
    width = max(20, *map(len, schedules.values()))
    print(f"{'JOB':<20} {'SCHEDULE':<{width}} {'NEXT RUN (UTC)':<20} LAST RUN")
    for name, job in config.jobs.items():
        next_run = _next_run(job, now)
        when = f"{next_run:%Y-%m-%d %H:%M:%S}" if next_run else "never in its window"
        when = when if job.enabled else "disabled"
        last = "unknown" if runs is None else _describe_run(runs.get(name))
        print(f"{name:<20} {schedules[name]:<{width}} {when:<20} {last}")
    return 0


def _next_run(job: JobConfig, now: datetime) -> datetime | None:
    """The job's next slot that its window lets run (None: none in the coming year)."""
    trigger = job.schedule.trigger(0)
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    while fire is not None and job.window is not None and not job.window.is_open(fire):
        if fire - now > timedelta(days=366):
            return None
        fire = trigger.get_next_fire_time(None, job.window.next_open(fire))
    return fire


# Exit codes of `jobs run`: the run's outcome (a stopped run: 128 + the signal, 130 for Ctrl-C;
# with --in-window, 4 when its window closed).
RUN_EXIT_CODES = {"success": 0, "failure": 1, "skipped": 3}
WINDOW_CLOSED_EXIT_CODE = 4
# Jobs that erase what cannot be restored: confirmed on a terminal, --yes otherwise.
ERASING_JOBS = frozenset({"user_retention"})


def confirm(args: argparse.Namespace, question: str) -> None:
    """Go on only when the operator agrees: ``--yes``, or "y" typed on a terminal. Without a
    terminal and without ``--yes``, a usage error (exit 2) before anything is changed."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question}: refused without --yes (stdin is not a terminal)")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise Declined("nothing was changed")


class Declined(Exception):
    """The operator answered no: one line, exit 1, nothing changed."""


def cmd_jobs_run(args: argparse.Namespace) -> int:
    if args.name not in JOB_NAMES:
        raise UsageError(f"unknown job {args.name!r}; jobs: {', '.join(JOB_NAMES)}")
    config: Config = args.config
    if args.name in ERASING_JOBS:
        confirm(args, f"{args.name} erases users for good; run it now?")
    stop = Stop()
    with open_database(args.database_url) as db, Progress(args.name) as progress:
        conninfo = job_conninfo(db.url, config)
        try:
            report = run_job(
                lambda: psycopg.connect(conninfo, autocommit=True),
                args.name,
                config.jobs[args.name].settings,
                replica_id=config.replica_id,
                pause=stop.event.wait,
                ledger_keep_seconds=config.ledger_retention_seconds,
                store=config.store,
                progress=progress.update,
                backlog=progress.set_total,
                # A run by hand ignores the job's window unless asked to keep to it.
                window=config.jobs[args.name].window if args.in_window else None,
            )
        except JobFailed as exc:
            report = exc.report
    log_run(report, config.replica_id)
    line = f"{report.job}: {report.outcome} rows={report.rows} {report.duration_seconds:.3f}s"
    if report.outcome == "stopped":
        left = f"{progress.total - report.rows}" if progress.total is not None else "the rest"
        why = "window closed" if report.details.get("reason") == WINDOW_CLOSED else "stopped"
        print(f"{line} ({why}: {report.rows} done, {left} left for the next run)")
        return WINDOW_CLOSED_EXIT_CODE if why == "window closed" else stop.exit_code
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


def _given(args: argparse.Namespace) -> tuple[str, uuid.UUID | None]:
    """``("user", id)`` or ``("person", id)`` from --user or --person, ``("user", None)`` for
    --channel and --channel-user-id: checked before anything is asked or connected."""
    if getattr(args, "person", None):
        return "person", _uuid(args.person, "person id")
    if args.user:
        return "user", _uuid(args.user, "user id")
    if not args.channel_user_id:
        raise UsageError("--channel needs --channel-user-id")
    return "user", None


def _subject(store: Store, args: argparse.Namespace) -> tuple[str, uuid.UUID]:
    """What ``_given`` names, an identity looked up (never created: unknown is ``NotFound``)."""
    kind, given = _given(args)
    if given is not None:
        return kind, given
    try:
        return kind, store.find_user(args.channel, args.channel_user_id).user_id
    except InvalidInput as exc:
        raise UsageError(str(exc)) from None


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise UsageError(f"not a {what}: {text!r}") from None


def cmd_forget(args: argparse.Namespace) -> int:
    kind, given = _given(args)
    if not args.yes and not sys.stdin.isatty():
        confirm(args, "forget erases for good")  # refuses before connecting
    with (
        open_database(args.database_url) as db,
        Store(db.url, min_size=0, statement_timeout_ms=None) as store,
    ):
        try:
            if given is None:  # a channel identity, which may have no users row
                forgotten = _forget_identity(store, args)
            else:
                confirm(args, f"erase {kind} {given} and everything the store holds about it?")
                if kind == "user":
                    forgotten = store.forget_user(given)
                else:
                    forgotten = store.forget_person(given)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    if given is not None or forgotten.user_id is not None:
        print(f"forgot {kind} {given or forgotten.user_id}:")
    else:
        print(f"forgot {args.channel} user {args.channel_user_id} (it had no users row):")
    for line in forgotten.lines():
        print(f"  {line}")
    return 0


def _forget_identity(store: Store, args: argparse.Namespace) -> Forgotten:
    """The user of --channel/--channel-user-id, or, when it has no users row (a bot on the
    python-telegram-bot persistence alone), what is kept under the identity."""
    try:
        user = store.find_user(args.channel, args.channel_user_id).user_id
        what = f"user {user} and everything the store holds about it"
    except NotFound:
        what = (
            f"what the store keeps under {args.channel} user {args.channel_user_id}"
            " (it has no users row)"
        )
    confirm(args, f"erase {what}?")
    return store.forget_channel_user(args.channel, args.channel_user_id)


def cmd_unlink(args: argparse.Namespace) -> int:
    _given(args)  # usage errors before connecting
    with open_database(args.database_url) as db, Store(db.url, min_size=0) as store:
        _, subject = _subject(store, args)
        try:
            unlinked = store.unlink(subject)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    if unlinked.person_id is None:
        print(f"user {unlinked.user_id} was not linked to a person")
    else:
        gone = " (its last user: the person was deleted)" if unlinked.person_deleted else ""
        print(f"user {unlinked.user_id} left person {unlinked.person_id}{gone}")
    return 0


@contextlib.contextmanager
def _output(path: str | None, force: bool) -> Iterator[IO[str]]:
    """stdout, or the file ``path``: created mode 0600 whatever the umask (it holds personal
    data), never overwritten without ``force``, and absent unless the export completed (it is
    written to a temporary file beside it, renamed into place at the end)."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.exists() and not force:
        raise UsageError(f"{path} exists; refusing to overwrite it without --force")
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", text=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            yield file
        if force:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)  # fails, rather than overwrites, should it appear now
            os.unlink(temporary)
    except FileExistsError:
        os.unlink(temporary)
        raise UsageError(f"{path} exists; refusing to overwrite it without --force") from None
    except BaseException:
        os.unlink(temporary)
        raise


class _Counted:
    """A text sink that tells ``progress`` the characters written so far (the export streams
    its document table by table; the store knows nothing of the progress shown)."""

    def __init__(self, out: IO[str], progress: Progress) -> None:
        self.out, self.progress, self.written = out, progress, 0

    def write(self, text: str) -> int:
        written = self.out.write(text)
        self.written += len(text)
        self.progress.update(self.written)
        return written


def cmd_export(args: argparse.Namespace) -> int:
    _given(args)  # usage errors before connecting or creating the file
    with (
        _output(args.output, args.force) as out,
        open_database(args.database_url) as db,
        Store(db.url, min_size=0, statement_timeout_ms=None) as store,
        Progress("export", "chars") as progress,
    ):
        kind, subject = _subject(store, args)
        counted = _Counted(out, progress)
        try:
            if kind == "user":
                store.export_user(subject, counted)
            else:
                store.export_person(subject, counted)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from None
    if args.output:
        print(f"exported {kind} {subject} to {args.output}", file=sys.stderr)
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


def _version() -> str:
    try:
        return metadata.version("sessionkeeper")
    except metadata.PackageNotFoundError:  # a checkout run as `python scheduler.py`
        return "unknown (not installed)"


def _global_options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its verb. Their defaults are
    SUPPRESS so that a verb's parser does not reset what was given before the verb."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="PostgreSQL URL (default: SESSIONKEEPER_DATABASE_URL, DATABASE_URL, else embedded)",
    )
    group.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        type=_log_level,
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
    )
    group.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=("text", "json"),
        help="text, or one JSON object per line (default: SESSIONKEEPER_LOG_FORMAT, else text)",
    )
    group.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        dest="config_file",
        metavar="FILE",
        help="TOML configuration file (default: SESSIONKEEPER_CONFIG); the environment wins",
    )
    return options


GLOBAL_DEFAULTS: dict[str, Any] = {
    "database_url": None,
    "log_level": "INFO",
    "log_format": None,
    "config_file": None,
}


def _settings_epilog() -> str:
    lines = [
        "settings: environment variable = default  [key in the --config file]",
        "(the environment wins over the file; durations take s, m, h or d; see docs/cli.md)",
    ]
    lines += [
        f"  {variable} = {default}  [{key}]" for variable, key, default in settings_reference()
    ]
    return "\n".join(lines)


def _user_options(parser: argparse.ArgumentParser, *, person: bool, required: bool = True) -> None:
    """--user ID | [--person ID] | --channel NAME --channel-user-id ID."""
    who = parser.add_mutually_exclusive_group(required=required)
    who.add_argument("--user", metavar="ID", help="a user id (UUID)")
    if person:
        who.add_argument("--person", metavar="ID", help="a person id (UUID): all its users")
    who.add_argument(
        "--channel", metavar="NAME", help="a user by channel identity: the channel (telegram)"
    )
    parser.add_argument(
        "--channel-user-id", metavar="ID", help="with --channel: the user's id on that channel"
    )


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = _Parser(prog="sessionkeeper", description=__doc__.splitlines()[0], parents=[common])
    parser.add_argument("--version", action="version", version=f"sessionkeeper {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(group: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        created: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=help, parents=[common], **kwargs
        )
        return created

    migrate_parser = command(
        commands,
        "migrate",
        "bring the database schema to head (adopts a TypeScript-era database in place)",
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
    command(
        commands,
        "run",
        "run the maintenance daemon",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_run)
    command(commands, "status", "database, schema and last runs").set_defaults(func=cmd_status)
    jobs = command(commands, "jobs", "list or run maintenance jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=_Parser)
    job_commands.required = True
    command(job_commands, "list", "list the jobs").set_defaults(func=cmd_jobs_list)
    run_one = command(
        job_commands,
        "run",
        "run one job now (Ctrl-C stops it at the next batch boundary: exit 130)",
    )
    run_one.add_argument("name", help="job name: " + ", ".join(JOB_NAMES))
    run_one.add_argument(
        "--yes", action="store_true", help="confirm an erasing job (user_retention) without asking"
    )
    run_one.add_argument(
        "--in-window",
        action="store_true",
        help="keep to the job's maintenance window (default: a run by hand ignores it): skipped"
        " outside it (exit 3), stopped at a batch boundary when it closes (exit 4)",
    )
    run_one.set_defaults(func=cmd_jobs_run)
    sessions = command(commands, "sessions", "archived sessions")
    session_commands = sessions.add_subparsers(
        dest="sessions_command", metavar="ACTION", parser_class=_Parser
    )
    session_commands.required = True
    restore = command(session_commands, "restore", "bring an archived session back")
    restore.add_argument("session_id", metavar="ID", help="the session id (a UUID)")
    restore.add_argument(
        "--make-current",
        action="store_true",
        help="set its last activity to now, so the user's next turn continues it"
        " (default: it keeps its last activity and the user's current session stays current)",
    )
    restore.set_defaults(func=cmd_sessions_restore)
    forget = command(
        commands, "forget", "erase a user or a person and everything the store holds about them"
    )
    _user_options(forget, person=True)
    forget.add_argument("--yes", action="store_true", help="erase without asking")
    forget.set_defaults(func=cmd_forget)
    unlink = command(
        commands, "unlink", "a user leaves its person (the person goes with its last user)"
    )
    _user_options(unlink, person=False)
    unlink.set_defaults(func=cmd_unlink)
    export = command(
        commands,
        "export",
        "write everything the store holds about a user or a person as JSON (stdout or --output)",
    )
    _user_options(export, person=True)
    export.add_argument(
        "--output", metavar="FILE", help="write to FILE (created mode 0600) instead of stdout"
    )
    export.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    export.set_defaults(func=cmd_export)
    command(
        commands,
        "citus-ddl",
        "print the SQL that distributes the schema over Citus (no database)",
    ).set_defaults(func=cmd_citus_ddl)
    roles.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for name, default in GLOBAL_DEFAULTS.items():
            if not hasattr(args, name):
                setattr(args, name, default)
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
    except Declined as exc:
        _complain(f"sessionkeeper: {exc}")
        return 1
    except StoreError as exc:
        _complain(f"sessionkeeper: {redact(str(exc))}")
        return 1
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        _complain(f"sessionkeeper: database unavailable: {_first_line(exc)}")
        return 1
    except (psycopg.Error, sqlalchemy.exc.DBAPIError) as exc:
        _complain(f"sessionkeeper: {_first_line(exc)}")
        return 1
    except BrokenPipeError:
        # The reader went away (`sessionkeeper export ... | head`): say so once, and keep the
        # interpreter's final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _complain("sessionkeeper: output closed before the end (broken pipe)")
        return 1
    except KeyboardInterrupt:
        _complain("sessionkeeper: interrupted")
        return 130


def _first_line(exc: BaseException) -> str:
    """The server's (or driver's) own message, without DETAIL, CONTEXT or SQL, password-free."""
    cause = getattr(exc, "orig", None) or exc
    primary = cause.diag.message_primary if isinstance(cause, psycopg.Error) else None
    lines = (primary or str(cause)).strip().splitlines()
    return redact(lines[0] if lines else type(cause).__name__)


def _complain(message: str) -> None:
    """One line on stderr, whatever the message quotes (an argument may hold a line break)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())
    print(shown, file=sys.stderr)
