"""The repository's layout contracts (DESIGN.md, Layout): what the distribution installs, and
migration files named in the order Alembic applies them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

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
