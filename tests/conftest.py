"""Shared by tests/unit and tests/integration: the Hypothesis profiles.

``ci`` (the default) is what CI runs: a fixed number of examples, derived from each test's
name instead of a random seed (``derandomize``), so a failure reproduces on every run and
machine, and no example database (nothing is written to ``.hypothesis/``). ``dev`` explores
further with random seeds (``HYPOTHESIS_PROFILE=dev python -m pytest tests/unit``). Tests scale
their own counts from the profile's (``settings.default.max_examples``): more for cheap unit
properties, fewer for those that talk to the database.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,  # a database round trip's time is not the property under test
    print_blob=True,
    # Database tests reuse one database per test function across its examples on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    parent=settings.get_profile("ci"),
    max_examples=1000,
    derandomize=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
