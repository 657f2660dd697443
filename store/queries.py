"""The store's SQL, read from ``queries.sql``: named blocks, each ``-- name --`` then the SQL."""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_COMMENT_LINE = re.compile(r"^\s*--.*\n?", re.MULTILINE)


def _without_comments(body: str) -> str:
    """The statement without its whole-line comments: they are for readers of the file, and
    psycopg encodes and hashes the statement's text on every call (append_messages: 3.8 kB
    with its comments, 2.5 kB without)."""
    return _COMMENT_LINE.sub("", body).strip()


_OLD_HEADER = re.compile(r"^-- name: \w+[ \t]*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` for every block; text before the first header (a preamble) is dropped.
    The one parser of the project's .sql files of named statements (the store's, its
    integrations', the jobs', legacy adoption's)."""
    stale = _OLD_HEADER.search(text)
    if stale:
        # Releases up to 0.2.0 headed the jobs' blocks so; read as a comment, such a block
        # would silently join the statement before it.
        raise ValueError(f"a block header in the old form: {stale.group(0)!r} (use '-- name --')")
    parts = _HEADER.split(text)
    names, bodies = parts[1::2], parts[2::2]
    queries = {name: _without_comments(body) for name, body in zip(names, bodies, strict=True)}
    if len(queries) != len(names):
        raise ValueError("a .sql file of named statements names a block twice")
    return queries


_USER = "%(user_id)s::uuid"
_OWNER = "(SELECT user_id FROM owner)"


def by_session(append: str) -> str:
    """``append_messages`` for a caller that gives only the session (``append_messages`` and
    ``finish_turn`` with a session id): the user id is read from the session, in the same
    statement. One node runs it as well as the original; on Citus it would not route (the
    user is unknown until the session is read), so bots that shard pass a ``Turn``."""
    if _USER not in append or not append.startswith("WITH "):
        raise ValueError("append_messages no longer names %(user_id)s::uuid after WITH")
    owner = "WITH owner AS (SELECT o.user_id FROM sessions o WHERE o.session_id = %(session_id)s), "
    return owner + append.removeprefix("WITH ").replace(_USER, _OWNER)


def _load() -> dict[str, str]:
    queries = parse(resources.files(__package__).joinpath("queries.sql").read_text())
    queries["append_messages_by_session"] = by_session(queries["append_messages"])
    return queries


QUERIES = MappingProxyType(_load())
