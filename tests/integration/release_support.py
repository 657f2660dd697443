"""Reading an earlier release's statements, kept verbatim in tests/fixtures/release-*/."""

from __future__ import annotations

import re
from pathlib import Path

from store.queries import parse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def release_statements(release: str, file: str) -> dict[str, str]:
    """The named statements of ``file`` of ``release``'s fixture. Releases up to 0.2.0 headed
    the jobs' blocks "-- name: x"; 0.3.0 heads every .sql file's blocks "-- x --", parsed by
    store.queries.parse alone."""
    text = (FIXTURES / f"release-{release}" / file).read_text(encoding="utf-8")
    return parse(re.sub(r"^-- name: (\w+)[ \t]*$", r"-- \1 --", text, flags=re.MULTILINE))
