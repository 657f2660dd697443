"""Securing a database URL, telling why a connection was refused, and keeping passwords out of
messages, logs and exception chains. The URL itself is resolved by the settings loader
(``store.settings.database_url``)."""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectionRefused,
    DatabaseMissing,
    TLSFailed,
)

_SECRET_KEYS = ("password", "sslpassword")


# -- TLS ---------------------------------------------------------------------------------------


def secure_conninfo(
    url: str,
    *,
    application_name: str = "sessionkeeper",
    environ: Mapping[str, str] | None = None,
) -> str:
    """A libpq conninfo for ``url`` that verifies TLS certificates for remote servers.

    libpq's own default (``sslmode=prefer``) encrypts without checking who answers, and may fall
    back to plaintext. Unless ``sslmode`` is set by the user (in the URL, its service or
    ``PGSSLMODE``; ``require`` or ``disable`` are the explicit ways to turn verification off),
    the conninfo gets ``sslmode=verify-full`` whenever any server it may reach is not a Unix
    socket or a loopback address, however that server is named: ``host``, ``hostaddr``,
    ``service`` (pg_service.conf), ``PGHOST``/``PGHOSTADDR``/``PGSERVICE``, several hosts.
    """
    params = parse_conninfo(url)
    environ = os.environ if environ is None else environ
    if not _sslmode_chosen(params, environ) and not _only_local(params, environ):
        params["sslmode"] = "verify-full"
    params.setdefault("application_name", application_name)
    return make_conninfo("", **params)


def parse_conninfo(url: str) -> dict[str, str]:
    """``url`` (a URL or key=value string) as libpq's keywords; ``ConfigurationError`` else."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split())
    # Raised outside the except block, so that no chained exception holds the URL.
    shown = redact(reason, known=_raw_secrets(url))
    raise ConfigurationError(f"invalid database URL {redact(url)}: {shown}")


def _sslmode_chosen(params: Mapping[str, str], environ: Mapping[str, str]) -> bool:
    service = _service(params, environ) or {}
    return any("sslmode" in p or "requiressl" in p for p in (params, service)) or any(
        environ.get(name, "").strip() for name in ("PGSSLMODE", "PGREQUIRESSL")
    )


def _only_local(params: Mapping[str, str], environ: Mapping[str, str]) -> bool:
    """Whether every server the conninfo may reach is a Unix socket or a loopback address,
    with libpq's precedence: the conninfo, then its service, then the environment."""
    service = _service(params, environ)
    if service is None:  # a service whose definition we cannot read: assume it is remote
        return False
    host = params.get("host") or service.get("host") or environ.get("PGHOST", "")
    hostaddr = params.get("hostaddr") or service.get("hostaddr") or environ.get("PGHOSTADDR", "")
    hosts, addrs = host.split(","), hostaddr.split(",")
    for i in range(max(len(hosts), len(addrs))):
        addr = addrs[i].strip() if i < len(addrs) else ""
        name = hosts[i].strip() if i < len(hosts) else ""
        if addr:  # libpq connects to hostaddr over TCP; host then only names the certificate
            if not _loopback(addr):
                return False
        elif name and not name.startswith(("/", "@")) and not _loopback(name):
            return False
    return True


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _service(params: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str] | None:
    """The keywords of the conninfo's service ({} without one; None if it is not found)."""
    name = params.get("service") or environ.get("PGSERVICE", "").strip()
    if not name:
        return {}
    files = [environ.get("PGSERVICEFILE") or str(Path("~/.pg_service.conf").expanduser())]
    sysconf = environ.get("PGSYSCONFDIR") or "/etc/postgresql-common"  # Debian's libpq's
    files.append(f"{sysconf}/pg_service.conf")
    for path in files:
        parser = configparser.ConfigParser(
            delimiters=("=",), comment_prefixes=("#",), interpolation=None, strict=False
        )
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return None
        if parser.has_section(name):
            return {k.lower(): v.strip() for k, v in parser.items(name)}
    return None


# -- refused connections -----------------------------------------------------------------------

# libpq gives no SQLSTATE for a failed connection: the server's words and libpq's are all there
# is. Anything not matched here (a server that is down, a timeout) is left to the pool's retries.
_REFUSALS: list[tuple[re.Pattern[str], type[ConnectionRefused], str]] = [
    (
        re.compile(r"server does not support SSL"),
        TLSFailed,
        "the server offers no TLS, and sslmode=verify-full (the default for a remote host) "
        "requires it: enable ssl on the server, or set sslmode=disable in the URL on a "
        "network you trust",
    ),
    (
        re.compile(r"root certificate file .* does not exist"),
        TLSFailed,
        "sslmode=verify-full needs the certificate authority that signed the server's "
        "certificate: set sslrootcert=/path/to/ca.crt (or sslrootcert=system for the system's "
        "CAs) in the URL, or sslmode=require to encrypt without verifying the server",
    ),
    (
        re.compile(r"does not match host name|server certificate for .* does not match"),
        TLSFailed,
        "connect by a name the server's certificate lists, or set sslmode=verify-ca to check "
        "the certificate authority but not the name",
    ),
    (
        re.compile(r"database \".*\" does not exist"),
        DatabaseMissing,
        "create the database (createdb), or fix its name in the URL; `sessionkeeper migrate` "
        "then creates the schema",
    ),
    (
        re.compile(
            r"authentication failed|no pg_hba\.conf entry|pg_hba\.conf rejects|"
            r"role \".*\" does not exist|no password supplied|password is required|"
            r"not permitted to log in",
            re.IGNORECASE,
        ),
        AuthenticationFailed,
        "check the user and password in the URL (or PGPASSWORD, ~/.pgpass) and the "
        "server's pg_hba.conf",
    ),
    (
        re.compile(r"certificate verify failed|certificate", re.IGNORECASE),
        TLSFailed,
        "the server's certificate is not signed by the authority in sslrootcert: set "
        "sslrootcert to that CA's file (or sslrootcert=system)",
    ),
    (
        re.compile(r"\bSSL\b|\bTLS\b"),
        TLSFailed,
        "the TLS handshake failed: check sslmode and sslrootcert in the URL",
    ),
]


def refusal(exc: BaseException, conninfo: str) -> ConnectionRefused | None:
    """The typed error a failed connection attempt stands for when waiting will not cure it
    (a refused login, a missing database, a failed TLS handshake); None otherwise."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    text = " ".join(str(exc).split())
    for pattern, kind, hint in _REFUSALS:
        if pattern.search(text):
            said = redact(text.removeprefix("connection failed: "), known=secrets(conninfo))
            return kind(f"cannot connect to {describe(conninfo)}: {said}; {hint}")
    return None


# -- redaction ---------------------------------------------------------------------------------

# A URL's password: from "scheme://user:" to the last "@" before the host (a password may
# hold spaces, quotes and even "@"), without running into another URL.
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>(?:(?!://)[^\n])*)"
    r"(?=@[^@\s/?#,'\"]*(?:[\s/?#,'\"]|$))",
    re.IGNORECASE,
)
# A password keyword (password=, sslpassword=, PGPASSWORD=) in a key=value string, a URL query
# or a message: a quoted value to its closing quote (or the end; '' as SQL writes a quote), an
# unquoted one up to the next "key=", "&" or the end of the line, spaces included.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>(?:\bssl|\bPG|\b)password\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.|'')*'?|\"(?:[^\"\\]|\\.)*\"?|[^\n&]*?(?=\s+\w+\s*=|[&\n]|$))",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"\"([^\"]*)\"")


def redact(text: str, *, known: Iterable[str] = ()) -> str:
    """``text`` with every password replaced by ``***``: in URLs, in ``password=`` and
    ``sslpassword=`` keywords, and (``known``) the given secrets wherever they appear, whole
    or as the words libpq quotes from a string it could not parse."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    text = _KEYWORD_PASSWORD.sub(r"\g<head>***", text)
    words = set()
    for secret in known:
        if len(secret) >= 3:  # shorter, it would blank out ordinary words
            text = text.replace(secret, "***")
        words |= {w for w in re.split(r"[\s'\"\\]+", secret) if w}
    if words:
        # libpq quotes the fragment it stumbled on: hide any that holds part of a secret.
        text = _QUOTED.sub(
            lambda m: '"***"' if any(w in m[1] or m[1] in w for w in words if m[1]) else m[0],
            text,
        )
    return text


def secrets(conninfo: str) -> list[str]:
    """The password and key passphrase of a (valid) conninfo, for ``redact(known=...)``."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return _raw_secrets(conninfo)
    return [str(params[k]) for k in _SECRET_KEYS if params.get(k)]


def _raw_secrets(text: str) -> list[str]:
    """What the redaction patterns would hide in ``text`` (also percent-decoded)."""
    found = [m["secret"].strip("'\"") for m in _URL_PASSWORD.finditer(text)]
    found += [m["secret"].strip("'\"") for m in _KEYWORD_PASSWORD.finditer(text)]
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


def scrub(exc: BaseException, *, known: Iterable[str] = ()) -> BaseException:
    """Redact ``exc`` and every exception chained to it (``__cause__``, ``__context__``) in
    place, so that a traceback or an error tracker shows no password; returns ``exc``."""
    known = list(known)
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(
            redact(a, known=known) if isinstance(a, str) else a for a in current.args
        )
        if isinstance(current, psycopg.Error):
            # The failed connection it keeps lists every connection option, password included.
            current._pgconn = None
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return exc


def describe(conninfo: str) -> str:
    """A short, password-free description of where a conninfo points (for logs)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact(conninfo)
    host = params.get("host") or params.get("hostaddr") or params.get("service")
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host or "(default host)")
    return f"{params.get('dbname') or '(default db)'} on {where}"
