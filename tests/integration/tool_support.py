"""What the tests that drive a Debian tool (PgBouncer, promtool, Patroni, Docker) share."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """A tool the test needs is missing: skipped on a developer's machine, a failure in CI,
    where .ci/run installs every such tool (so the test can never be skipped there for good)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
