"""The store's SQL, read from ``queries.sql``: named blocks, each ``-- name --`` then the SQL."""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` for every block; text before the first header (a preamble) is dropped."""
    parts = _HEADER.split(text)
    names, bodies = parts[1::2], parts[2::2]
    queries = {name: body.strip() for name, body in zip(names, bodies, strict=True)}
    if len(queries) != len(names):
        raise ValueError("queries.sql names a block twice")
    return queries


QUERIES = MappingProxyType(parse(resources.files(__package__).joinpath("queries.sql").read_text()))
