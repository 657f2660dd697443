"""The jobs' SQL statements, read by name from ``queries.sql``."""

from __future__ import annotations

import re
from importlib.resources import files

_NAME_LINE = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` for every ``-- name: x`` block of ``text``."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Comment lines go: psycopg would read a placeholder-like text in them as a parameter.
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


QUERIES = parse(files("sessionkeeper.jobs").joinpath("queries.sql").read_text(encoding="utf-8"))
