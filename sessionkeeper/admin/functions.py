"""Applying ``store/sql/functions.sql``, the current definition of every ``sk_*`` function.

``sessionkeeper migrate`` calls :func:`apply_functions` once the database is at head (from the
Alembic environment, in the migration's transaction and under its advisory lock), so a release
that only changes a function body still installs it. The file holds only ``CREATE OR REPLACE``
(and ``DROP ... IF EXISTS`` for retired functions): applying it twice changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import metadata, resources
from typing import Any

import psycopg
from packaging.version import Version
from psycopg import errors, sql

log = logging.getLogger("sessionkeeper.migrate")

FUNCTIONS_RESOURCE = ("store", "sql/functions.sql")

_DEFINED = re.compile(
    r"^CREATE OR REPLACE FUNCTION\s+([a-z_][a-z0-9_]*)\s*\(", re.MULTILINE | re.IGNORECASE
)


# Plain SQL functions that are not VOLATILE, SECURITY DEFINER or SET anything are the ones the
# planner inlines into the calling query (sk_history_arrays_v3 into begin_turn's history read,
# sk_proactive_candidates into the jobs' keyset batch, sk_capped_total into the rollups). A SET
# clause would stop the inlining, so their search_path is not pinned: inlined, they run as
# part of the caller's own statement, with its privileges and its search_path (pinned, when
# the caller is another sk_* function), so a pinned path would protect nothing. Every other
# function is pinned. tests/integration/test_roles.py holds every function to one of the two.
_SCHEMA_FUNCTIONS = r"""
SELECT p.proname, p.oid::regprocedure::text, n.nspname,
       l.lanname = 'sql' AND p.provolatile <> 'v' AND NOT p.prosecdef
       AND p.proconfig IS NULL AS inlinable
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = current_schema()::regnamespace
  AND (p.proname LIKE 'sk\_%%' OR p.proname = ANY(%(defined)s))
ORDER BY 2
"""


class FunctionsApplyError(Exception):
    """functions.sql could not be applied; nothing of it was (the transaction is aborted)."""


def functions_sql() -> str:
    """The text of ``store/sql/functions.sql`` as installed with the package."""
    package, path = FUNCTIONS_RESOURCE
    return resources.files(package).joinpath(path).read_text(encoding="utf-8")


def defined_functions(text: str | None = None) -> set[str]:
    """The names of the functions the file defines."""
    return set(_DEFINED.findall(functions_sql() if text is None else text))


def this_release() -> str:
    """The installed distribution's version: the release whose functions.sql this is."""
    return metadata.version("sessionkeeper")


def apply_functions(connection: psycopg.Connection[Any], release: str | None = None) -> bool:
    """Execute functions.sql on ``connection`` within its current transaction, unless the
    database already runs the functions of a newer release; returns whether it applied.

    ``applied_functions`` records the release (and the file's hash) that applied them. A
    replica of the previous release that migrates on start finds the database at head too; it
    must not put its older functions back, and expand/contract means the newer ones serve it.
    The caller commits (or rolls back) and holds the migration lock: two concurrent
    ``CREATE OR REPLACE`` of one function fail with "tuple concurrently updated".
    """
    release = release or this_release()
    text = functions_sql()
    digest = hashlib.sha256(text.encode()).hexdigest()
    recorded = connection.execute(
        "SELECT release, sha256 FROM applied_functions FOR UPDATE"
    ).fetchone()
    # The same release applies again (cheap, and it repairs a hand-edited function).
    if recorded is not None and Version(recorded[0]) > Version(release):
        log.warning(
            "functions.sql not applied: the database runs release %s's functions, newer than"
            " this release (%s); they serve this release too",
            recorded[0],
            release,
        )
        return False
    try:
        # No parameters: psycopg sends the text as one simple query, all statements at once.
        connection.execute(text, prepare=False)
    except errors.InvalidFunctionDefinition as exc:
        # E.g. "cannot change return type of existing function": a changed result or signature
        # needs a new name (sk_..._v2), since bots of the previous release still call the old.
        raise FunctionsApplyError(
            f"store/sql/functions.sql: {exc.diag.message_primary}"
            f" ({exc.diag.message_hint or exc.diag.message_detail or 'no detail'});"
            " a function whose signature or result changes needs a new name (..._v2),"
            " see docs/upgrades.md"
        ) from exc
    harden_functions(connection)
    connection.execute(
        "INSERT INTO applied_functions (release, sha256) VALUES (%s, %s)"
        " ON CONFLICT (singleton) DO UPDATE"
        " SET release = excluded.release, sha256 = excluded.sha256, applied_at = now()",
        (release, digest),
    )
    return True


def harden_functions(connection: psycopg.Connection[Any]) -> None:
    """Revoke EXECUTE from PUBLIC on every function of the file (the roles' grants are
    sessionkeeper.admin.roles') and pin its search_path to its schema (pg_temp last), so
    that no object a caller puts earlier in its path is resolved in a function's body; but
    an inlinable one's (above). Run after each apply: CREATE OR REPLACE resets a function's
    SET options to its statement's."""
    rows = connection.execute(
        _SCHEMA_FUNCTIONS, {"defined": sorted(defined_functions())}
    ).fetchall()
    for _name, signature, schema, inlinable in rows:
        target = sql.SQL(signature)  # regprocedure's text, quoted where needed
        connection.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(target))
        if not inlinable:
            connection.execute(
                sql.SQL("ALTER FUNCTION {} SET search_path = {}, pg_temp").format(
                    target, sql.Identifier(schema)
                )
            )
