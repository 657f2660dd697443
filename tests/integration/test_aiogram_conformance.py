"""aiogram's own storage tests pass against SessionkeeperStorage, unchanged.

The test file is not copied into this repository: it is taken at test time from the source
distribution of the installed aiogram (``pip download --no-binary :all:``; or the sdist at
``SK_AIOGRAM_SDIST``), and run by pytest in a process of its own with aiogram_conformance.py as
the plugin that gives it its fixtures on a real database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import psycopg
import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.storage.base import StorageKey
from fake_telegram import run

from store import AsyncStore, InvalidInput
from store.integrations.aiogram import SessionkeeperStorage

MEMBER = "tests/test_fsm/storage/test_storages.py"
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def aiogram_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aiogram's test_storages.py, as its sdist for the installed version holds it."""
    release = version("aiogram")
    sdist = os.environ.get("SK_AIOGRAM_SDIST")
    work = tmp_path_factory.mktemp("aiogram-sdist")
    if sdist is None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"aiogram=={release}",
                "-d",
                str(work),
            ],
            check=True,
            timeout=240,
        )
        sdist = str(next(work.glob("aiogram-*.tar.gz")))
    with tarfile.open(sdist) as archive:
        name = f"aiogram-{release}/{MEMBER}"
        member = archive.extractfile(name)
        assert member is not None, f"{sdist} holds no {name}"
        target = work / "test_storages.py"
        target.write_bytes(member.read())
    return target


@pytest.mark.slow  # pip download builds the sdist's metadata (about a minute)
def test_aiogram_storage_tests_pass_unchanged(aiogram_tests: Path, database_url: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "aiogram_conformance",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "--rootdir",
            str(aiogram_tests.parent),
            str(aiogram_tests),
        ],
        env={
            **os.environ,
            "SK_CONFORMANCE_DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        },
        cwd=aiogram_tests.parent,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    for test in ("test_set_state", "test_set_data", "test_update_data"):
        assert f"PASSED test_storages.py::TestStorages::{test}[memory_storage]" in report, report
    assert "3 passed, 9 deselected" in report, report
    with psycopg.connect(database_url) as conn:  # the tests ended with data: the row is real
        rows = conn.execute("SELECT data FROM aiogram_fsm_states WHERE bot_id = 42").fetchall()
    assert rows == [({"foo": "bar", "baz": "test"},)]


def test_an_empty_update_on_a_key_without_a_row_writes_no_row(database_url: str) -> None:
    """aiogram.sql's rule (a key with no state and no data has no row), which aiogram's tests
    do not check; and the non-mapping error is both the store's and aiogram's."""

    key = StorageKey(chat_id=5, user_id=5, bot_id=9)
    got: dict[str, object] = {}

    async def scenario(_: object) -> None:
        async with AsyncStore(database_url) as db:
            storage = SessionkeeperStorage(db)
            got["updated"] = await storage.update_data(key, {})
            with pytest.raises(DataNotDictLikeError) as raised:
                await storage.set_data(key, ["not", "a", "mapping"])  # type: ignore[arg-type]
            got["error"] = raised.value

    run(scenario)
    assert got["updated"] == {}
    assert isinstance(got["error"], InvalidInput) and "mapping" in str(got["error"])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM aiogram_fsm_states").fetchone() == (0,)
