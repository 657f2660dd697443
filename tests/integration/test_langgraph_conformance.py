"""The third-party suite langgraph-checkpoint-conformance, unchanged, against both savers on
a real PostgreSQL: every base capability and every optional one the savers implement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from store import AsyncStore, Store
from store.integrations.langgraph import AsyncSessionkeeperSaver, SessionkeeperSaver


def check(report_name: str, report: object) -> None:
    from langgraph.checkpoint.conformance.report import CapabilityReport

    assert isinstance(report, CapabilityReport)
    failures = [f for r in report.results.values() for f in r.failures]
    assert failures == [], f"{report_name}: {failures}"
    # Every capability, base and optional, was detected and passed.
    assert {name for name, r in report.results.items() if r.detected} == {
        c.value for c in ALL_CAPABILITIES
    }
    assert report.passed_all() and report.conformance_level() == "FULL"


def test_the_async_saver_passes_every_capability(database_url: str) -> None:
    async def factory() -> AsyncGenerator[AsyncSessionkeeperSaver, None]:
        async with AsyncStore(database_url, max_size=4) as db:
            yield AsyncSessionkeeperSaver(db)

    registered = checkpointer_test(name="AsyncSessionkeeperSaver")(factory)
    report = asyncio.run(validate(registered, progress=ProgressCallbacks.verbose()))
    check("AsyncSessionkeeperSaver", report)


def test_the_sync_saver_passes_every_capability(database_url: str) -> None:
    async def factory() -> AsyncGenerator[SessionkeeperSaver, None]:
        with Store(database_url, max_size=4) as db:
            yield SessionkeeperSaver(db)

    registered = checkpointer_test(name="SessionkeeperSaver")(factory)
    report = asyncio.run(validate(registered, progress=ProgressCallbacks.verbose()))
    check("SessionkeeperSaver", report)


@pytest.mark.parametrize("capability", ["put"])
def test_a_broken_saver_fails_the_suite(database_url: str, capability: str) -> None:
    # The suite must be able to fail here, or the tests above prove nothing: a saver that
    # forgets channel values fails "put".
    class Forgetful(AsyncSessionkeeperSaver):
        async def aput(self, config, checkpoint, metadata, new_versions):  # type: ignore[no-untyped-def]
            forgotten = checkpoint.copy()
            forgotten["channel_values"] = {}
            return await super().aput(config, forgotten, metadata, new_versions)

    async def factory() -> AsyncGenerator[AsyncSessionkeeperSaver, None]:
        async with AsyncStore(database_url, max_size=2) as db:
            yield Forgetful(db)

    registered = checkpointer_test(name="Forgetful")(factory)
    report = asyncio.run(validate(registered, capabilities={capability}))
    assert report.results[capability].passed is False
