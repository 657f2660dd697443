"""A pytest plugin that runs aiogram's own storage tests (``tests/test_fsm/storage/
test_storages.py`` of aiogram's source distribution, unchanged) against
``SessionkeeperStorage`` on the PostgreSQL database named by ``SK_CONFORMANCE_DATABASE_URL``.

test_aiogram_conformance.py runs it in a pytest process of its own: ``pytest -p
aiogram_conformance <extracted test_storages.py>``. It stands in for aiogram's conftest: the
``storage`` and ``storage_key`` fixtures, and running ``async def`` tests (aiogram runs them with
pytest-asyncio's auto mode; here each test gets its own event loop, as there). aiogram's file
parametrizes ``storage`` with its backends' fixture names; the memory slot is kept and given our
storage, the redis/mongo slots (backends that are not here) are deselected.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import psycopg
import pytest
from aiogram.fsm.storage.base import StorageKey

from store import AsyncStore
from store.integrations.aiogram import SessionkeeperStorage

KEPT_SLOT = "memory_storage"
KEY = StorageKey(chat_id=-42, user_id=42, bot_id=42)  # aiogram's conftest's storage_key


class _Storage:
    """The ``storage`` fixture's value until the test's event loop runs: the store (an
    ``AsyncStore``) must be opened on the loop that uses it."""


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> _Storage:
    assert request.param == KEPT_SLOT, request.param
    return _Storage()


@pytest.fixture
def storage_key() -> StorageKey:
    return KEY


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [item for item in items if f"[{KEPT_SLOT}]" in item.nodeid]
    deselected = [item for item in items if item not in kept]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    args: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(_run(pyfuncitem.obj, args))
    return True


async def _run(test: Any, args: dict[str, Any]) -> None:
    url = os.environ["SK_CONFORMANCE_DATABASE_URL"]
    with psycopg.connect(url) as conn:  # every test starts from an empty storage
        conn.execute("DELETE FROM aiogram_fsm_states WHERE bot_id = %s", (KEY.bot_id,))
    async with AsyncStore(url) as db:
        storage = SessionkeeperStorage(db)
        try:
            await test(**{k: storage if isinstance(v, _Storage) else v for k, v in args.items()})
        finally:
            await storage.close()
