"""The alert rules (deploy/prometheus/alerts.yml) checked and unit-tested with promtool.

``promtool`` comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it
these tests are skipped. The expressions are also evaluated against a real daemon in
tests/test_prometheus_live.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.config import Schedule
from jobs.registry import JOBS

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
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
    } <= set(names)


def test_recorded_job_intervals_match_the_default_schedules() -> None:
    """SessionkeeperJobNotSucceeding's intervals are the daemon's default schedules."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    (rule,) = [
        r
        for g in groups
        for r in g["rules"]
        if r.get("record") == "sessionkeeper:job_interval_seconds"
    ]
    recorded = {
        job: int(seconds)
        for seconds, job in re.findall(r'vector\((\d+)\), "job", "(\w+)"', rule["expr"])
    }
    defaults = {
        name: Schedule.parse(spec.default_schedule).interval_seconds for name, spec in JOBS.items()
    }
    assert recorded == defaults


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
