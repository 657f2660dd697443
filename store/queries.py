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


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` for every block; text before the first header (a preamble) is dropped."""
    parts = _HEADER.split(text)
    names, bodies = parts[1::2], parts[2::2]
    queries = {name: _without_comments(body) for name, body in zip(names, bodies, strict=True)}
    if len(queries) != len(names):
        raise ValueError("queries.sql names a block twice")
    return queries


QUERIES = MappingProxyType(parse(resources.files(__package__).joinpath("queries.sql").read_text()))
