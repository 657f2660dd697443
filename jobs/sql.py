"""The jobs' SQL statements, read by name from ``queries.sql`` (named blocks, parsed as the
store's own: ``store.queries.parse``)."""

from __future__ import annotations

from importlib.resources import files
from types import MappingProxyType

from store.queries import parse

QUERIES = MappingProxyType(
    parse(files("sessionkeeper.jobs").joinpath("queries.sql").read_text(encoding="utf-8"))
)
