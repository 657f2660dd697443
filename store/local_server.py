"""Where the daemon's embedded PostgreSQL lives, so that a bot on the same machine finds it
without a URL. The daemon (``sessionkeeper.admin.embedded``) starts the server at these paths
and bots look for its socket there: one source for both sides.

The base directory is ``SESSIONKEEPER_EMBEDDED_DIR`` when set; otherwise a daemon run as root
uses ``/var/lib/sessionkeeper`` and any other user its data directory (platformdirs). A bot does
not know who started the daemon, so it looks in both. The server's socket sits in
``<base>/socket``, a directory of its own that the server's group may enter (see
docs/connecting.md); servers started by sessionkeeper 0.2.0 had it in ``<base>/pgdata``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import platformdirs

from .errors import ConfigurationError

DIR_VARIABLE = "SESSIONKEEPER_EMBEDDED_DIR"
SYSTEM_BASE_DIR = Path("/var/lib/sessionkeeper")
DATABASE = "sessionkeeper"  # the daemon's database (not the "postgres" maintenance one)
SOCKET_FILE = ".s.PGSQL.5432"


def user_base_dir() -> Path:
    return Path(platformdirs.user_data_dir("sessionkeeper"))


def default_base_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where a daemon started by this user keeps its embedded server."""
    configured = (os.environ if environ is None else environ).get(DIR_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser()
    return SYSTEM_BASE_DIR if os.geteuid() == 0 else user_base_dir()


def socket_dir(base_dir: Path) -> Path:
    return base_dir / "socket"


def url(directory: Path, dbname: str = DATABASE) -> str:
    """A libpq URL for ``dbname`` on the server whose socket is in ``directory``."""
    return f"postgresql://postgres@/{quote(dbname)}?host={quote(str(directory))}"


def running_socket_dir(base_dir: Path) -> Path | None:
    """The directory holding the socket of a server running in ``base_dir``, if any.
    ``PermissionError`` when this user may not look (not in the server's group)."""
    for directory in (socket_dir(base_dir), base_dir / "pgdata"):
        try:
            if stat.S_ISSOCK((directory / SOCKET_FILE).stat().st_mode):
                return directory
        except PermissionError:
            if directory == socket_dir(base_dir):
                raise
        except OSError:
            continue
    return None


def discover_url(environ: Mapping[str, str] | None = None) -> str:
    """The URL of the embedded server running on this machine, for a bot given no URL; else a
    ``ConfigurationError`` that names the URL to set and what is in the way."""
    environ = os.environ if environ is None else environ
    configured = environ.get(DIR_VARIABLE, "").strip()
    candidates = (
        [Path(configured).expanduser()] if configured else [SYSTEM_BASE_DIR, user_base_dir()]
    )
    blocked: list[Path] = []
    for base in candidates:
        try:
            directory = running_socket_dir(base)
        except PermissionError:
            blocked.append(base)
            continue
        if directory is not None:
            return url(directory)
    if blocked:
        raise ConfigurationError(_not_permitted(blocked[0]))
    installed = next((b for b in candidates if (b / "pgdata" / "PG_VERSION").exists()), None)
    base = installed or candidates[0]
    wanted = f"SESSIONKEEPER_DATABASE_URL='{url(socket_dir(base))}'"
    if installed is not None:
        raise ConfigurationError(
            f"no database URL is set and the embedded PostgreSQL in {installed} is not running: "
            f"start it with `sessionkeeper run`, then this bot finds it (or set {wanted})"
        )
    looked = " and ".join(str(b) for b in candidates)
    raise ConfigurationError(
        "no database URL is set and no embedded PostgreSQL runs on this machine (looked in "
        f"{looked}): set SESSIONKEEPER_DATABASE_URL (or DATABASE_URL), e.g. "
        "SESSIONKEEPER_DATABASE_URL='postgresql://user:password@db.example/dbname', or start "
        f"the daemon here with `sessionkeeper run` and set {wanted}"
    )


def _not_permitted(base: Path) -> str:
    directory = socket_dir(base)
    user = pwd.getpwuid(os.geteuid()).pw_name
    if not os.access(base, os.X_OK):
        return (
            f"no database URL is set and user {user!r} may not enter {base}, where the embedded "
            f"PostgreSQL runs: make it passable (chmod 0711 {base}; the systemd unit's "
            "StateDirectoryMode=0711), and see docs/connecting.md for the group to join"
        )
    try:
        group = grp.getgrgid(directory.stat().st_gid).gr_name
    except (OSError, KeyError):
        group = "sessionkeeper"
    return (
        f"no database URL is set and user {user!r} may not use the embedded PostgreSQL's socket "
        f"in {directory}: add the user to group {group!r} (`usermod -aG {group} {user}`, then "
        f"restart the bot) so that SESSIONKEEPER_DATABASE_URL='{url(directory)}' works"
    )
