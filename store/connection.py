"""Finding the database URL, securing it, and keeping its password out of logs and errors."""

from __future__ import annotations

import os
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConfigurationError

URL_VARIABLES = ("SESSIONKEEPER_DATABASE_URL", "DATABASE_URL")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def configured_database_url(explicit: str | None = None) -> str | None:
    """The URL to use: the explicit one, else ``SESSIONKEEPER_DATABASE_URL``, else
    ``DATABASE_URL``; None when none is set (callers may then fall back to the embedded server).
    """
    if explicit:
        return explicit
    for name in URL_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def secure_conninfo(url: str, *, application_name: str = "sessionkeeper") -> str:
    """A libpq conninfo for ``url`` that verifies TLS certificates for remote hosts.

    libpq's own default (``sslmode=prefer``) encrypts without checking who answers. Unless the
    URL sets ``sslmode`` itself (``require`` or ``disable`` are the explicit ways to turn
    verification off) a TCP host other than loopback gets ``sslmode=verify-full``.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(
            f"invalid database URL {redact(url)}: {redact(' '.join(str(exc).split()))}"
        ) from None
    hosts = [h for h in str(params.get("host") or "").split(",") if h]
    remote = any(not h.startswith("/") and h not in _LOCAL_HOSTS for h in hosts)
    if "sslmode" not in params and remote and not os.environ.get("PGSSLMODE"):
        params["sslmode"] = "verify-full"
    params.setdefault("application_name", application_name)
    return make_conninfo("", **params)


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password in a URL or ``password=`` keyword replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)


def describe(conninfo: str) -> str:
    """A short, password-free description of where a conninfo points (for logs)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact(conninfo)
    host = params.get("host") or "(default host)"
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"{params.get('dbname') or '(default db)'} on {where}"
