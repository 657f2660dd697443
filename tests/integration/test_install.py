"""The built distribution installs only ``store`` and ``sessionkeeper`` as top-level names, and its
command works next to packages that own the generic names an earlier layout used: PyPI's
``scheduler`` (a common choice for bot reminders) and a package of a bot's own named ``jobs``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A bot's own top-level "jobs" package, which must never be the one sessionkeeper imports.
BOTS_JOBS = "raise ImportError('this is the bot\\'s own jobs package, not sessionkeeper\\'s')\n"


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT)
    (built,) = out.glob("sessionkeeper-*.whl")
    return built


def test_the_wheel_installs_store_and_sessionkeeper_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {
            name.split("/")[0]
            for name in archive.namelist()
            if not name.split("/")[0].endswith((".dist-info", ".data"))
        }
        names = archive.namelist()
    assert tops == {"store", "sessionkeeper"}
    # The jobs and migrations ship inside sessionkeeper, with their SQL.
    assert "sessionkeeper/jobs/queries.sql" in names
    assert "sessionkeeper/migrations/versions/0001_initial_schema.py" in names


@pytest.mark.slow
def test_the_command_works_beside_pypis_scheduler_and_a_bots_jobs(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    # The project's dependencies come from this environment; the wheel itself, PyPI's
    # scheduler and the bot's jobs package are installed into the new one, which wins.
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    python = venv / "bin" / "python"
    bots = tmp_path / "bots-jobs"
    (bots / "jobs").mkdir(parents=True)
    (bots / "jobs" / "__init__.py").write_text(BOTS_JOBS)
    (bots / "pyproject.toml").write_text(
        '[project]\nname = "bots-jobs"\nversion = "1"\n'
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    run(python, "-m", "pip", "install", "-q", "scheduler", bots)
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel)
    # The neighbours are really there, under the names an earlier layout installed.
    probe = (
        "import scheduler, importlib.util as u;"
        " print(scheduler.__file__, u.find_spec('jobs').origin)"
    )
    scheduler_file, jobs_file = run(python, "-c", probe, cwd=tmp_path).split()
    assert scheduler_file.startswith(str(venv)) and jobs_file.startswith(str(venv))
    usage = run(venv / "bin" / "sessionkeeper", "--help", cwd=tmp_path)
    assert usage.startswith("usage: sessionkeeper")
    jobs = run(venv / "bin" / "sessionkeeper", "jobs", "--help", cwd=tmp_path)
    assert "run" in jobs
    module = run(python, "-m", "sessionkeeper", "--help", cwd=tmp_path)
    assert module == usage
