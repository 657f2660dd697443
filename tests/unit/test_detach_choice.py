"""Which DETACH the jobs use, from the server's version (issue 24): the choice is a function of
its inputs, so the plain path can be tested on a server that has both (tests/integration/
test_plain_detach.py runs it on PostgreSQL 15)."""

from __future__ import annotations

import pytest

from sessionkeeper.jobs.partitions import detach_concurrently


@pytest.mark.parametrize(
    ("version", "has_default", "citus", "concurrently"),
    [
        (180001, False, False, True),
        (150018, False, False, True),
        (140000, False, False, True),  # the first release with DETACH ... CONCURRENTLY
        (130016, False, False, False),  # PostgreSQL 13: the plain DETACH
        (150018, True, False, False),  # refused on a table with a DEFAULT partition
        (180001, False, True, False),  # Citus refuses it on distributed tables
    ],
)
def test_the_detach_follows_the_server(
    version: int, has_default: bool, citus: bool, concurrently: bool
) -> None:
    assert detach_concurrently(version, has_default=has_default, citus=citus) is concurrently
