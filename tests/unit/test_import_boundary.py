"""``import store`` is what every bot pays for: it loads no framework, no migration tooling and
no operator-side module. Checked in a fresh interpreter, since this test process has imported
everything already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top-level module names a bot must not get from ``import store`` (langchain covers
# langchain_core and friends).
FORBIDDEN = (
    "sqlalchemy",
    "alembic",
    "sessionkeeper",
    "apscheduler",
    "jobs",
    "langchain",
    "langgraph",
    "aiogram",
    "telegram",
    "pywa",  # pywa and pywa_async
    "httpx",  # pywa's HTTP client
    "prometheus_client",
    "tqdm",  # the CLI's progress bars
)


def modules_after(statement: str) -> set[str]:
    """Every module in ``sys.modules`` after running ``statement`` in a new interpreter."""
    script = f"{statement}; import sys; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.partition(".")[0].startswith(FORBIDDEN))


def test_import_store_loads_no_framework_migration_tool_or_admin_module() -> None:
    modules = modules_after("import store")
    assert "store" in modules and "psycopg" in modules
    assert forbidden(modules) == []


def test_the_check_sees_sqlalchemy_when_an_admin_module_is_imported() -> None:
    # The same check on the migration runner must fail, or the test above proves nothing.
    modules = modules_after("import store; import sessionkeeper.admin.migrate")
    found = forbidden(modules)
    assert "sqlalchemy" in found and "alembic" in found and "sessionkeeper.admin.migrate" in found


def test_the_integrations_package_loads_no_framework() -> None:
    # Each integration imports its framework only when its own module is imported.
    assert forbidden(modules_after("import store.integrations")) == []
    found = forbidden(modules_after("import store.integrations.langchain"))
    assert "langchain_core" in found and "sessionkeeper" not in found
    found = forbidden(modules_after("import store.integrations.aiogram"))
    assert "aiogram" in found and "telegram" not in found
    found = forbidden(modules_after("import store.integrations.telegram"))
    assert "telegram" in found and "aiogram" not in found
    found = forbidden(modules_after("import store.integrations.whatsapp"))
    assert "pywa_async" in found and "pywa" in found and "telegram" not in found


def test_prometheus_client_comes_only_with_store_metrics() -> None:
    # prometheus-client is installed with sessionkeeper (a dependency), yet a bot loads it only
    # when it opts into bot metrics.
    assert "prometheus_client" not in modules_after("import store")
    assert "prometheus_client" in modules_after("import store.metrics")
