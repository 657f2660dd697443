"""A real Prometheus scraping a real daemon and a bot: every dashboard query and alert expression
works.

The daemon is ``python -m sessionkeeper run`` on the test's own database with every job scheduled
each second; Prometheus is the Debian package's binary, on loopback, with a scrape configuration
made from deploy/prometheus/prometheus.yml (its scrape jobs and label handling, static loopback
targets instead of the compose addresses) and the real alert rules. The bot is compose's sample
bot, deploy/sample_bot.py: a real ``store.Store`` instrumented with ``store.metrics`` taking turns
on the same database and serving its registry on loopback, scraped as the configuration's
``sessionkeeper-bots`` job. All are stopped when the test ends.

Checked: every Grafana panel query returns series (the store dashboard's "Bots" row from the
bot's series); every metric name a dashboard or an alert uses is in the daemon's or the bot's
/metrics; every alert expression is accepted by Prometheus's query API
and every rule evaluates without error in Prometheus's own rule manager. The dashboards'
PostgreSQL panels run against the same database as the read-only role that
deploy/postgres/10-grafana-reader.sh creates, and return rows once the jobs have run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from daemon_support import daemon_env, every_job
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sessionkeeper.admin import roles
from sessionkeeper.jobs import JOB_NAMES, partition_maintenance

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# Grafana's variables and macros, as Grafana would expand them with "All" selected.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
    "$job": ".*",
    "$bot": ".*",
}
BOT_JOB = "sessionkeeper-bots"
STARTUP_SECONDS = 60
SETTLE_SECONDS = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary"),
]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def poll(check: Callable[[], T | None], seconds: float, what: str, log: Path | None = None) -> T:
    """``check()``'s first non-None answer, asked every 0.2 s for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        answer = check()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            detail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"gave up waiting for {what} after {seconds}s\n{detail}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@dataclass
class Running:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.process.args!r} exited early:\n{self.log.read_text()[-4000:]}")


@contextlib.contextmanager
def start(
    command: list[str], log: Path, port: int, ready_path: str, env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Runs ``command`` (output to ``log``) until it answers 200 on ``ready_path``; stops it
    with SIGTERM (SIGKILL if it lingers) when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    running = Running(f"http://127.0.0.1:{port}", log, process)
    try:

        def ready() -> bool | None:
            running.alive()
            return True if http_get(running.url + ready_path)[0] == 200 else None

        poll(ready, STARTUP_SECONDS, f"{command[0]} to answer on {ready_path}", log)
        yield running
    finally:
        stop(process)


def arrange_data(database_url: str) -> None:
    """Rows for every job to work on, so that per-channel and per-job series have values."""
    user_id = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (user_id, channel, channel_user_id) VALUES (%s, 'telegram', 'u1')",
            (user_id,),
        )
        for age_days in (0, 90):
            session_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO sessions (session_id, user_id, created_at, last_active, next_seq)"
                " VALUES (%s, %s, now() - make_interval(days => %s),"
                " now() - make_interval(days => %s), 2)",
                (session_id, user_id, age_days, age_days),
            )
            conn.execute(
                "INSERT INTO session_messages (session_id, seq, role, content)"
                " VALUES (%s, 0, 'user', 'hello'), (%s, 1, 'assistant', 'hi')",
                (session_id, session_id),
            )
        conn.execute(
            "INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens)"
            " VALUES (%s, 'telegram', 120, 80), (%s, 'telegram', 10, 5)",
            (user_id, user_id),
        )
        # An ended window, in the partition of its day (as a daemon running then made it).
        two_days_ago = datetime.now(UTC) - timedelta(days=2)
        partition_maintenance.run(conn, partition_maintenance.Settings(ahead=1), two_days_ago)
        conn.execute(
            "INSERT INTO rate_limits (user_id, window_seconds, window_start, request_count)"
            " VALUES (%s, 60, %s, 3)",
            (user_id, two_days_ago),
        )


@pytest.fixture
def daemon(database_url: str, tmp_path: Path) -> Iterator[Running]:
    arrange_data(database_url)
    port = free_port()
    # Every 2 s: fast enough to fill every panel, slow enough that a loaded CI machine stays
    # well inside JobNotSucceeding's 3 intervals (the test asserts no alert is even pending).
    # usage_rollup in batches of one row: its runs reach batch boundaries, where the pacer
    # measures the probe and its budget (the "Yielding to the bots" row draws only measured jobs).
    env = daemon_env(
        database_url,
        SESSIONKEEPER_METRICS_PORT=str(port),
        SESSIONKEEPER_USAGE_ROLLUP_BATCH_SIZE="1",
        **every_job("2s"),
    )
    with start(
        [sys.executable, "-m", "sessionkeeper", "run"],
        tmp_path / "daemon.log",
        port,
        "/readyz",
        env,
    ) as running:
        yield running


@pytest.fixture
def bot(database_url: str, tmp_path: Path) -> Iterator[Running]:
    """deploy/sample_bot.py (compose's sample bot) on the test's database, a turn every 0.2 s."""
    port = free_port()
    env = daemon_env(database_url, SESSIONKEEPER_DATABASE_URL=database_url)
    script = DEPLOY / "sample_bot.py"
    command = [sys.executable, str(script), "--port", str(port), "--interval", "0.2"]
    with start(command, tmp_path / "bot.log", port, "/metrics", env) as running:
        yield running


@pytest.fixture
def grafana_reader(database_url: str) -> Iterator[str]:
    """A conninfo for the read-only login deploy/postgres/10-grafana-reader.sh creates (run for
    real with psql, under a unique role name), a member of the reader role as `roles setup
    --reader-login` makes it, dropped after the test. Without psql: the
    database owner's, with a warning."""
    if shutil.which("psql") is None:
        warnings.warn(
            "no psql: the init script is not run, SQL panels run as the owner", stacklevel=1
        )
        yield database_url
        return
    params = conninfo_to_dict(database_url)
    role, password = f"grafana_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    env = {
        **os.environ,
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_DB": str(params["dbname"]),
        "PGHOST": str(params.get("host") or ""),
        "PGPORT": str(params.get("port") or ""),
        "GRAFANA_DB_USER": role,
        "GRAFANA_DB_PASSWORD": password,
    }
    script = DEPLOY / "postgres" / "10-grafana-reader.sh"
    result = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        # What compose's `roles` service does: the login joins the reader role (docs/roles.md).
        with psycopg.connect(database_url, autocommit=True) as conn:
            roles.setup(conn, members={"reader": [role]})
        yield make_conninfo(database_url, user=role, password=password)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def prometheus_config(target: str, bot_target: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml's scrape jobs for the daemon and the bots, every second,
    with the loopback addresses ``target`` and ``bot_target`` in place of compose's."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {s["job_name"]: s for s in config["scrape_configs"]}
    scrapes = []
    for name, address in (("sessionkeeper", target), (BOT_JOB, bot_target)):
        scrape = jobs[name]
        for key in [k for k in scrape if k.endswith("_sd_configs")]:
            del scrape[key]
        scrape["static_configs"] = [{"targets": [address]}]
        scrape["scrape_interval"] = "1s"
        scrapes.append(scrape)
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": scrapes,
    }


@pytest.fixture
def prometheus(daemon: Running, bot: Running, tmp_path: Path) -> Iterator[Running]:
    config = tmp_path / "prometheus.yml"
    targets = (daemon.url.removeprefix("http://"), bot.url.removeprefix("http://"))
    config.write_text(yaml.safe_dump(prometheus_config(*targets)))
    port = free_port()
    command = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with start(command, tmp_path / "prometheus.log", port, "/-/ready") as running:
        yield running


def query(prometheus: Running, expr: str) -> dict[str, Any]:
    status, body = http_get(
        prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    )
    answer: dict[str, Any] = json.loads(body) if body else {"status": f"http {status}"}
    return answer


def panel_queries(kind: str, substitutions: dict[str, str]) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, query with Grafana's variables expanded) for every panel
    query of ``kind`` (``expr``: PromQL, ``rawSql``: PostgreSQL)."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                if kind not in target:
                    continue
                text = target[kind]
                for name, value in substitutions.items():
                    text = text.replace(name, value)
                assert "$" not in text, f"unexpanded variable in {panel['title']}: {text}"
                found.append((path.name, panel["title"], text))
    return found


def promql_panels() -> list[tuple[str, str, str]]:
    return panel_queries("expr", GRAFANA_SUBSTITUTIONS)


def sql_panels() -> list[tuple[str, str, str]]:
    # Grafana's PostgreSQL macros expand to quoted timestamps: the dashboard's default range.
    now = datetime.now(UTC)
    return panel_queries(
        "rawSql",
        {
            "$__timeFrom()": f"'{(now - timedelta(hours=6)).isoformat()}'",
            "$__timeTo()": f"'{now.isoformat()}'",
        },
    )


def variable_queries() -> list[str]:
    found = []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            found.append(variable["definition"])
    return found


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def metric_names(text: str) -> set[str]:
    """Every ``sessionkeeper_*`` and ``process_*`` name in a query."""
    return set(re.findall(r"\b(?:sessionkeeper|process)_[a-z0-9_]+", text))


def exported(process: Running) -> set[str]:
    """The sample names of a process's /metrics."""
    status, body = http_get(process.url + "/metrics")
    assert status == 200
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_dashboards_and_alerts_work_against_a_real_daemon_and_bot(
    daemon: Running, bot: Running, prometheus: Running, grafana_reader: str
) -> None:
    # What the daemon and the bot export, straight from their /metrics.
    bot_samples = exported(bot)
    assert "sessionkeeper_store_operation_duration_seconds_bucket" in bot_samples
    samples = exported(daemon) | bot_samples
    assert http_get(daemon.url + "/healthz")[0] == 200

    # No dashboard or alert names a metric neither exports.
    used: dict[str, set[str]] = {}
    for board, title, expr in promql_panels():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"{board}: {title}")
    for definition in variable_queries():
        for name in metric_names(definition):
            used.setdefault(name, set()).add("template variable")
    for alert, expr in alert_expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"alert {alert}")
    unknown = {name: where for name, where in used.items() if name not in samples}
    assert not unknown, f"not exported by the daemon or the bot: {unknown}"

    # Prometheus scrapes the daemon and the bot (both targets are up) ...
    def scraped() -> bool | None:
        prometheus.alive()
        daemon.alive()
        bot.alive()
        result = query(prometheus, "up == 1")
        jobs = {series["metric"]["job"] for series in result.get("data", {}).get("result", [])}
        return True if jobs >= {"sessionkeeper", BOT_JOB} else None

    poll(scraped, SETTLE_SECONDS, "a successful scrape", prometheus.log)

    # ... and every panel query returns series once each job has run a few times.
    panels = promql_panels()
    empty: list[tuple[str, str, str]] = []

    assert any("sessionkeeper_store_" in item[2] for item in panels)  # the Bots row

    def all_panels_have_series() -> bool | None:
        prometheus.alive()
        daemon.alive()
        bot.alive()
        empty.clear()
        for item in panels:
            result = query(prometheus, item[2])
            assert result["status"] == "success", (item, result)
            if not result["data"]["result"]:
                empty.append(item)
        return True if not empty else None

    deadline = time.monotonic() + SETTLE_SECONDS
    while all_panels_have_series() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, f"panels without series: {empty}"

    # The template variables offer the replica and every job (job_name). Scraped without
    # honor_labels, `job` is the scrape job's; the daemon's deprecated `job` (the maintenance
    # job, kept until the next release) arrives as exported_job.
    for label, expected in (
        ("instance", {daemon.url.removeprefix("http://")}),
        ("job_name", None),
        ("job", {"sessionkeeper"}),
        ("exported_job", None),
    ):
        status, body = http_get(
            prometheus.url
            + f"/api/v1/label/{label}/values?"
            + urllib.parse.urlencode({"match[]": "sessionkeeper_job_runs_total"})
        )
        assert status == 200
        values = set(json.loads(body)["data"])
        assert values == (expected or set(JOB_NAMES)), (label, values)
    # ... and the bot variable offers the bot.
    status, body = http_get(
        prometheus.url
        + "/api/v1/label/instance/values?"
        + urllib.parse.urlencode(
            {"match[]": "sessionkeeper_store_operation_duration_seconds_count"}
        )
    )
    assert status == 200 and set(json.loads(body)["data"]) == {bot.url.removeprefix("http://")}

    # Every alert expression parses and evaluates through the query API ...
    for alert, expr in alert_expressions():
        result = query(prometheus, expr)
        assert result["status"] == "success", (alert, result)

    # ... and in Prometheus's rule manager, which loaded alerts.yml itself.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        prometheus.alive()
        _, body = http_get(prometheus.url + "/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        # A rule not evaluated yet reports Go's zero time, 0001-01-01.
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else None

    rules = poll(rules_evaluated, SETTLE_SECONDS, "the rules to be evaluated", prometheus.log)
    assert sorted(r["name"] for r in rules) == sorted(a for a, _ in alert_expressions())
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
    # A healthy daemon trips no alert, not even into "pending": no expression is always true.
    active = {r["name"]: r["state"] for r in rules if r.get("type") == "alerting"}
    assert set(active.values()) == {"inactive"}, active

    # The PostgreSQL panels return rows, read as Grafana's role, once usage_rollup has run.
    def sql_panels_have_rows() -> bool | None:
        daemon.alive()
        with psycopg.connect(grafana_reader, autocommit=True) as conn:
            empty = [item for item in sql_panels() if not conn.execute(item[2]).fetchall()]
        return True if not empty else None

    poll(sql_panels_have_rows, SETTLE_SECONDS, "rows in every PostgreSQL panel", daemon.log)


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql")
def test_grafana_reader_role_reads_but_cannot_write(grafana_reader: str) -> None:
    with psycopg.connect(grafana_reader) as conn:
        assert conn.execute("SELECT count(*) FROM usage_daily").fetchone() == (0,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM usage_daily")
