"""Applying ``store/sql/functions.sql``, the current definition of every ``sk_*`` function.

``sessionkeeper migrate`` calls :func:`apply_functions` once the database is at head (from the
Alembic environment, in the migration's transaction and under its advisory lock), so a release
that only changes a function body still installs it. The file holds only ``CREATE OR REPLACE``
(and ``DROP ... IF EXISTS`` for retired functions): applying it twice changes nothing.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
from psycopg import errors

FUNCTIONS_RESOURCE = ("store", "sql/functions.sql")

_DEFINED = re.compile(
    r"^CREATE OR REPLACE FUNCTION\s+([a-z_][a-z0-9_]*)\s*\(", re.MULTILINE | re.IGNORECASE
)


class FunctionsApplyError(Exception):
    """functions.sql could not be applied; nothing of it was (the transaction is aborted)."""


def functions_sql() -> str:
    """The text of ``store/sql/functions.sql`` as installed with the package."""
    package, path = FUNCTIONS_RESOURCE
    return resources.files(package).joinpath(path).read_text(encoding="utf-8")


def defined_functions(text: str | None = None) -> set[str]:
    """The names of the functions the file defines."""
    return set(_DEFINED.findall(functions_sql() if text is None else text))


def apply_functions(connection: psycopg.Connection[Any]) -> None:
    """Execute functions.sql on ``connection`` within its current transaction.

    The caller commits (or rolls back) and holds the migration lock: two concurrent
    ``CREATE OR REPLACE`` of one function fail with "tuple concurrently updated".
    """
    try:
        # No parameters: psycopg sends the text as one simple query, all statements at once.
        connection.execute(functions_sql(), prepare=False)
    except errors.InvalidFunctionDefinition as exc:
        # E.g. "cannot change return type of existing function": a changed result or signature
        # needs a new name (sk_..._v2), since bots of the previous release still call the old.
        raise FunctionsApplyError(
            f"store/sql/functions.sql: {exc.diag.message_primary}"
            f" ({exc.diag.message_hint or exc.diag.message_detail or 'no detail'});"
            " a function whose signature or result changes needs a new name (..._v2),"
            " see docs/upgrades.md"
        ) from exc
