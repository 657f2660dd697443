"""The repository's layout contracts (DESIGN.md, Layout): what the distribution installs, and
migration files named in the order Alembic applies them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from store.queries import parse

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"


def test_revision_files_are_named_in_apply_order() -> None:
    script = ScriptDirectory(str(ROOT / "migrations"))
    # walk_revisions goes from head down; reversed, it is the order an upgrade applies them.
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    files = sorted(p.name for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert [name[:4] for name in files] == chain
    for name in files:
        text = (VERSIONS / name).read_text(encoding="utf-8")
        assert re.search(rf'^revision: str = "{name[:4]}"$', text, re.MULTILINE), name
        assert re.search(rf"^Revision ID: {name[:4]}$", text, re.MULTILINE), name


def test_revisions_take_nothing_from_the_live_functions_file() -> None:
    # A revision that read functions.sql would change meaning the day a release edits or drops a
    # function there: each revision carries the SQL it runs.
    for path in VERSIONS.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "admin.functions" not in text, path.name
        assert 'functions.sql")' not in text, path.name


def test_scheduler_py_runs_the_command_from_a_checkout() -> None:
    result = subprocess.run(
        [sys.executable, "scheduler.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sessionkeeper")


def test_python_dash_m_sessionkeeper_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionkeeper", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout and "jobs" in result.stdout


def test_prometheus_client_is_a_dependency_and_no_extra() -> None:
    """The daemon needs prometheus-client, so it is a dependency; no extra lists it again (the
    deprecated ``metrics`` extra is empty until the next release). ``import store`` still does
    not import it (tests/unit/test_import_boundary.py)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}

    assert "prometheus-client" in names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert extras["metrics"] == []
    listing = {name for name, reqs in extras.items() if "prometheus-client" in names(reqs)}
    assert listing == set()


def test_a_block_header_in_the_old_form_is_refused() -> None:
    # Read as a comment, it would join its statement to the one before it, unnoticed.
    assert parse("-- a --\nSELECT 1\n-- b --\nSELECT 2\n") == {"a": "SELECT 1", "b": "SELECT 2"}
    with pytest.raises(ValueError, match="old form"):
        parse("-- a --\nSELECT 1\n-- name: b\nSELECT 2\n")
