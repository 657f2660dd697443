"""Named statements run as one plan, for the integrations whose SQL lives in a .sql file of
their own (aiogram.sql, telegram.sql); free of every framework."""

from __future__ import annotations

from collections.abc import Mapping

from .. import core

Step = tuple[str, Mapping[str, object]]


def steps(queries: Mapping[str, str], *named: Step) -> core.Plan[core.Rows]:
    """A plan running the named statements in order; its value is the last one's rows."""
    rows: core.Rows = []
    for name, params in named:
        rows = yield core.Step(name, params, queries=queries)
    return rows
