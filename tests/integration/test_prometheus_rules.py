"""The alert rules (deploy/prometheus/alerts.yml) checked and unit-tested with promtool.

``promtool`` comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it
these tests are skipped. The expressions are also evaluated against a real daemon in
tests/integration/test_prometheus_live.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

import store.metrics
from sessionkeeper.daemon.metrics import DaemonMetrics
from sessionkeeper.jobs import JOB_NAMES
from store import Store

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERT_TESTS = RULES_DIR / "alerts_test.yml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_required_alerts_exist() -> None:
    names = alert_names()
    assert len(names) == len(set(names))
    assert {
        "SessionkeeperJobFailing",
        "SessionkeeperJobNotSucceeding",
        "SessionkeeperDaemonDown",
        "SessionkeeperNoDaemonUp",
        "SessionkeeperPoolExhausted",
        "SessionkeeperArchivalFallingBehind",
        "SessionkeeperBotBeginTurnSlow",
        "SessionkeeperBotStoreErrors",
        "SessionkeeperBotPoolExhausted",
    } <= set(names)


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def test_the_rules_read_only_series_the_daemon_and_bots_export(database_url: str) -> None:
    """The alerts hold no copy of the daemon's configuration (such as the jobs' schedules, which
    operators change): they read it from the daemon's own series, every one of which exists,
    or from the bots' (store.metrics; the errors counter once a call has raised)."""
    metrics = DaemonMetrics(JOB_NAMES)
    metrics.add_pool(dict)
    metrics.set_intervals({name: 60.0 for name in JOB_NAMES})
    bots = CollectorRegistry()
    with Store(database_url, max_size=1) as db:
        store.metrics.instrument(db, registry=bots)
        with pytest.raises(store.InvalidInput):
            db.begin_turn("Not A Channel", "1")
        exported = {
            sample.name
            for registry in (metrics.registry, bots)
            for family in registry.collect()
            for sample in family.samples
        }
    expressions = rule_expressions()
    for name, expr in expressions.items():
        used = set(re.findall(r"\b(?:sessionkeeper|process)_[a-z0-9_]+", expr))
        assert used <= exported, (name, used - exported)
        assert "vector(" not in expr, f"{name} holds a constant copy of something"
    for alert in ("SessionkeeperJobNotSucceeding", "SessionkeeperArchivalFallingBehind"):
        assert "sessionkeeper_job_interval_seconds" in expressions[alert], alert
    assert (
        "sessionkeeper_sessions_archivable_age_seconds"
        in (expressions["SessionkeeperArchivalFallingBehind"])
    )


def test_the_rules_name_the_maintenance_job_by_job_name() -> None:
    """``job`` is the scrape job (Prometheus's target label, no honor_labels); the daemon's
    maintenance job is ``job_name``. Its deprecated ``job`` label (exported_job once scraped)
    is used by no rule, so nothing breaks when the next release drops it."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert not re.search(r'\bjob\b(?!\s*=\s*"sessionkeeper")', rule["expr"]), rule
        for text in (rule["expr"], *rule.get("annotations", {}).values()):
            assert "exported_job" not in text and not re.search(r"\$labels\.job\b", text)
    assert "job_name" in rule_expressions()["SessionkeeperJobFailing"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    cases: dict[str, set[bool]] = {name: set() for name in alert_names()}
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    missing = {name: seen for name, seen in cases.items() if seen != {True, False}}
    assert not missing, f"alerts without both a firing and a quiet case: {missing}"


def test_every_alert_has_severity_and_explanation() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule_: dict[str, Any] = rule
            if "alert" not in rule_:
                continue
            assert rule_["labels"]["severity"] in ("warning", "critical"), rule_["alert"]
            assert rule_["annotations"]["summary"] and rule_["annotations"]["description"]


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation is reported: the unit tests above are not vacuous."""
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            # Expect silence where an alert fires, and vice versa.
            case["exp_alerts"] = [] if case["exp_alerts"] else [{"exp_labels": {}}]
    broken = tmp_path / ALERT_TESTS.name
    broken.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(broken))
    assert result.returncode == 1
    failures = result.stdout.count("alertname:") + result.stderr.count("alertname:")
    expected = sum(len(t.get("alert_rule_test", [])) for t in tests["tests"])
    assert failures == expected, result.stdout + result.stderr
