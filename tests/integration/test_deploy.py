"""Static checks of the deploy files (no Docker engine, systemd or cluster runs here).

What is checked, and with what:

* Dockerfile: parsed by BuildKit's own parser (the ``dockerfile`` package wraps it); slim base
  images, a non-root user, a HEALTHCHECK on /healthz, sources that exist, the console script.
* compose.yaml: validated against the Compose specification's JSON schema (the copy vendored in
  ``check-jsonschema``), plus the wiring: mounts exist, migrate gates the daemon, two replicas,
  Prometheus finds the replicas on the daemon's metrics port, host ports on loopback only.
* Kubernetes: every built-in resource validated in strict mode (unknown fields are errors)
  against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``. The ServiceMonitor
  is a Prometheus Operator CRD without a bundled schema: its fields are checked here by hand,
  with the cross-references (selector, port names, probes) of all manifests.
* systemd: ``systemd-analyze verify`` when it is installed (the ExecStart binary path is
  pointed at this environment's ``sessionkeeper`` script, since /opt/sessionkeeper is absent).
* Prometheus configuration: ``promtool check config`` when promtool is installed.
* Grafana: the committed dashboards equal the generator's output; provisioning wiring.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
METRICS_PORT = 9464

# A use of the label `job` other than the scrape job's (job="sessionkeeper"): the maintenance
# job is `job_name` (the daemon's `job` beside it is deprecated). `$job` is Grafana's variable.
JOB_LABEL_USE = re.compile(r'(?<!\$)\bjob\b(?!\s*=\s*"sessionkeeper")')

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


COMPOSE_SCHEMA_CHECK = (
    sys.executable,
    "-m",
    "check_jsonschema",
    "--builtin-schema",
    "vendor.compose-spec",
)


def run(*command: str) -> tuple[int, str]:
    """Exit status and output (stdout then stderr) of a command."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, result.stdout + result.stderr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_grafana_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "grafana_generate", DEPLOY / "grafana/generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Dockerfile -----------------------------------------------------------------------------


def docker_commands() -> tuple[Any, ...]:
    return tuple(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def final_stage(commands: tuple[Any, ...]) -> list[Any]:
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return list(commands[starts[-1] :])


def test_dockerfile_uses_slim_images_and_a_non_root_user() -> None:
    # A builder that reaches no image registry cannot fetch a frontend image.
    assert not re.search(r"^#\s*syntax\s*=", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    commands = docker_commands()
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in commands
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    stages = set()
    for command in commands:
        if command.cmd == "FROM":
            image = command.value[0]
            # Defaults may refer to other arguments (BASE_IMAGE=python:${PYTHON_VERSION}-slim).
            while "${" in image:
                image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            assert re.fullmatch(r"python:3\.\d+-slim", image), command.original
            if len(command.value) == 3:  # FROM image AS name
                stages.add(command.value[2])
    copies_from = {f.split("=", 1)[1] for c in commands for f in c.flags if f.startswith("--from")}
    assert copies_from <= stages, "a COPY --from names an image, not a stage of this file"
    users = [c.value[0] for c in final_stage(commands) if c.cmd == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users


def test_dockerfile_healthcheck_asks_healthz_on_the_metrics_port() -> None:
    stage = final_stage(docker_commands())
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    assert env["SESSIONKEEPER_METRICS_HOST"] == "0.0.0.0"
    port = env["SESSIONKEEPER_METRICS_PORT"]
    assert [c.value[0] for c in stage if c.cmd == "EXPOSE"] == [port]
    checks = [c for c in stage if c.cmd == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert check.value[0] == "CMD" and check.json, "exec form, no shell in the way"
    assert "/healthz" in " ".join(check.value)
    assert "SESSIONKEEPER_METRICS_PORT" in " ".join(check.value)


def test_dockerfile_runs_the_console_script_and_copies_existing_sources() -> None:
    commands = docker_commands()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [c for c in final_stage(commands) if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["sessionkeeper"]
    assert "sessionkeeper" in scripts
    (cmd,) = [c for c in final_stage(commands) if c.cmd == "CMD"]
    assert list(cmd.value) == ["run"]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    copied = 0
    for command in commands:
        if command.cmd != "COPY" or any(f.startswith("--from") for f in command.flags):
            continue
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} missing"
            # The dockerignore excludes everything and lets the copied paths back in.
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, source
            copied += 1
    assert copied >= 5


def test_the_image_holds_every_python_package_the_distribution_declares() -> None:
    commands = docker_commands()
    copied = {s for c in commands if c.cmd == "COPY" for s in c.value[:-1]}
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in tool["packages"]:
        directory = tool.get("package-dir", {}).get(package, package.replace(".", "/"))
        assert directory.split("/")[0] in copied, package
        # sessionkeeper/jobs links to jobs/: the folder it points at must be copied too.
        real = (ROOT / directory).resolve().relative_to(ROOT)
        assert real.parts[0] in copied, package
    assert "py-modules" not in tool  # the top-level names are store and sessionkeeper only


# --- compose -----------------------------------------------------------------------------------


def compose() -> Any:
    return load_yaml(DEPLOY / "compose.yaml")


def test_compose_file_matches_the_compose_specification() -> None:
    status, output = run(*COMPOSE_SCHEMA_CHECK, str(DEPLOY / "compose.yaml"))
    assert status == 0, output


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The schema check above can fail: an unknown service key is reported."""
    broken = compose()
    broken["services"]["sessionkeeper"]["replicaz"] = 2
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    status, output = run(*COMPOSE_SCHEMA_CHECK, str(path))
    assert status == 1
    assert "replicaz" in output


def test_compose_wires_postgres_migrate_daemons_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "roles",
        "migrate",
        "sessionkeeper",
        "sample-bot",
        "prometheus",
        "grafana",
    }

    setup, migrate, daemon = services["roles"], services["migrate"], services["sessionkeeper"]
    assert setup["command"][:2] == ["roles", "setup"]
    assert setup["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["roles"]["condition"] == "service_completed_successfully"
    assert daemon["command"] == ["run"]
    assert daemon["deploy"]["replicas"] == 2
    assert daemon["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Separate logins (docs/roles.md): the superuser only sets the roles up; migrate, the
    # daemons and Grafana each log in as a member of their group role.
    logins = {
        name: services[name]["environment"]["DATABASE_URL"].split("://")[1].split(":")[0]
        for name in ("roles", "migrate", "sessionkeeper")
    }
    assert logins == {"roles": "postgres", "migrate": "sk_migrate", "sessionkeeper": "sk_daemon"}
    members = dict(option.removeprefix("--").split("=") for option in setup["command"][2:])
    assert members == {
        "owner-login": "sk_migrate",
        "daemon-login": "sk_daemon",
        "bot-login": "sk_bot",
        "reader-login": services["grafana"]["environment"]["GRAFANA_DB_USER"],
    }
    # The init scripts only create logins: no GRANT (pg_read_all_data would show Grafana the
    # secret that keys the user ids).
    for script in (DEPLOY / "postgres").glob("*.sh"):
        statements = [line for line in script.read_text(encoding="utf-8").splitlines()]
        assert not [line for line in statements if line.lstrip().upper().startswith("GRANT")]
    for service in (setup, migrate, daemon):
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
        url = service["environment"]["DATABASE_URL"]
        assert "@postgres:5432/" in url
        # The postgres image has no certificate: TLS is turned off explicitly, not by accident.
        assert url.endswith("?sslmode=disable")
        assert service["environment"]["SESSIONKEEPER_METRICS_PORT"] == str(METRICS_PORT)
        assert service["environment"]["SESSIONKEEPER_MIGRATE_ON_START"] == "false"

    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_compose_prometheus_scrapes_every_daemon_replica_with_its_labels() -> None:
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == "sessionkeeper"]
    # The maintenance job is in job_name: `job` stays the scrape job's (no honor_labels).
    assert "honor_labels" not in scrape
    (sd,) = scrape["dns_sd_configs"]
    assert sd["names"] == ["sessionkeeper"] and sd["type"] == "A"
    assert sd["port"] == METRICS_PORT


def test_compose_runs_the_sample_bot_and_prometheus_scrapes_it() -> None:
    """The sample bot (deploy/sample_bot.py, run for real in test_prometheus_live.py) runs from
    the daemon's image against the same database once migrated, logged in as the bots' login
    (docs/roles.md), and is Prometheus's bots job."""
    services = compose()["services"]
    bot = services["sample-bot"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in bot["volumes"]}
    script = mounts[bot["entrypoint"][-1]]
    assert (DEPLOY / script).resolve() == DEPLOY / "sample_bot.py"
    bot_url = bot["environment"]["DATABASE_URL"]
    daemon_url = services["sessionkeeper"]["environment"]["DATABASE_URL"]
    assert bot_url.startswith("postgresql://sk_bot:") and daemon_url.startswith(
        "postgresql://sk_daemon:"
    )
    assert bot_url.split("@", 1)[1] == daemon_url.split("@", 1)[1]  # the same database
    assert bot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    command = bot["command"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert port in " ".join(bot["healthcheck"]["test"])
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == "sessionkeeper-bots"]
    assert scrape["static_configs"] == [{"targets": [f"sample-bot:{port}"]}]
    assert "sample-bot" in services["prometheus"]["depends_on"]


def test_compose_grafana_provisions_the_datasources_and_dashboards() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/sessionkeeper.yaml")
    (files,) = provider["providers"]
    assert files["type"] == "file"
    assert mounts[files["options"]["path"]] == "./grafana/dashboards"

    generator = load_grafana_generator()
    provisioned = {}
    for path in sorted((DEPLOY / "grafana/provisioning/datasources").glob("*.yaml")):
        for source in load_yaml(path)["datasources"]:
            provisioned[source["uid"]] = source
    assert {uid: s["type"] for uid, s in provisioned.items()} == {
        generator.DATASOURCE["uid"]: generator.DATASOURCE["type"],
        generator.SQL_DATASOURCE["uid"]: generator.SQL_DATASOURCE["type"],
    }
    assert provisioned[generator.DATASOURCE["uid"]]["url"] == "http://prometheus:9090"

    # The PostgreSQL datasource logs in as the read-only role the init script creates, with
    # the credentials compose hands to both containers.
    sql = provisioned[generator.SQL_DATASOURCE["uid"]]
    assert sql["url"] == "postgres:5432"
    assert sql["jsonData"]["database"] == services["postgres"]["environment"]["POSTGRES_DB"]
    assert sql["user"] == "${GRAFANA_DB_USER}"
    assert sql["secureJsonData"]["password"] == "${GRAFANA_DB_PASSWORD}"
    postgres_env = services["postgres"]["environment"]
    for name in ("GRAFANA_DB_USER", "GRAFANA_DB_PASSWORD"):
        assert grafana["environment"][name] == postgres_env[name]
    postgres_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["postgres"]["volumes"]}
    init = DEPLOY / postgres_mounts["/docker-entrypoint-initdb.d"]
    assert (init / "10-grafana-reader.sh").stat().st_mode & 0o111, "init script not executable"


@needs_promtool
def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    # The rule file's path inside the container, pointed at the repository's copy.
    config["rule_files"] = [str(DEPLOY / "prometheus/alerts.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    status, output = run("promtool", "check", "config", str(path))
    assert status == 0, output


# --- Grafana -------------------------------------------------------------------------------------


def test_committed_dashboards_equal_the_generator_output() -> None:
    generator = load_grafana_generator()
    stale = list(generator.differences())
    assert not stale, f"run python deploy/grafana/generate.py; stale: {stale}"


def test_dashboards_have_instance_and_job_variables_used_by_every_query() -> None:
    """Daemon panels select the replica with $instance; the store dashboard's "Bots" row
    (store.metrics series) selects the bot with $bot."""
    paths = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    assert paths
    uids = set()
    bot_panels = 0
    for path in paths:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        names = [v["name"] for v in board["templating"]["list"]]
        bots = path.name == "sessionkeeper-store.json"
        assert names == ["instance", "job", *(["bot"] if bots else [])], path.name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for item in board["panels"]:
            if item["type"] == "row":
                continue
            assert item["targets"], item["title"]
            for query in item["targets"]:
                assert item["datasource"] == query["datasource"], item["title"]
                if "rawSql" in query:
                    continue  # PostgreSQL: the session store's own tables
                if "sessionkeeper_store_" in query["expr"]:
                    bot_panels += 1
                    assert bots and '$bot"' in query["expr"], (item["title"], query["expr"])
                    continue
                assert '$instance"' in query["expr"], (item["title"], query["expr"])
                # The maintenance job is selected by job_name; `job` is the scrape job's.
                assert not JOB_LABEL_USE.search(query["expr"]), (item["title"], query["expr"])
        for variable in board["templating"]["list"]:
            assert not JOB_LABEL_USE.search(variable["definition"]), variable["name"]
    assert len(uids) == len(paths)
    assert bot_panels >= 5


# --- systemd -------------------------------------------------------------------------------------


def test_systemd_unit_runs_the_daemon_as_its_own_user() -> None:
    unit = (DEPLOY / "systemd/sessionkeeper.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["ExecStart"].endswith("/sessionkeeper run")
    assert settings["User"] == "sessionkeeper"
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["StateDirectory"] == "sessionkeeper"
    environment = [line for line in unit.splitlines() if line.startswith("Environment=")]
    assert f"Environment=SESSIONKEEPER_METRICS_PORT={METRICS_PORT}" in environment
    # ExecStartPre migrates; the daemon does not repeat it.
    assert settings["ExecStartPre"].endswith("/sessionkeeper migrate")
    assert "Environment=SESSIONKEEPER_MIGRATE_ON_START=false" in environment


def test_systemd_unit_leaves_file_descriptors_for_the_http_connection_cap() -> None:
    from sessionkeeper.daemon.config import Config

    unit = (DEPLOY / "systemd/sessionkeeper.service").read_text()
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1
    assert int(limits[0].split("=", 1)[1]) >= 4 * Config().metrics_max_connections


@pytest.mark.parametrize(
    "path",
    [
        "Dockerfile",
        "compose.yaml",
        "kubernetes/deployment.yaml",
        "systemd/sessionkeeper.service",
        "systemd/sessionkeeper.env.example",
    ],
)
def test_deploy_files_say_why_they_bind_where_they_bind(path: str) -> None:
    lines = (DEPLOY / path).read_text().splitlines()
    binds = [i for i, line in enumerate(lines) if "SESSIONKEEPER_METRICS_HOST" in line]
    assert binds, path
    for i in binds:
        # A comment within the few lines before each setting, naming who connects.
        before = "\n".join(lines[max(0, i - 6) : i]).lower()
        assert "#" in before and ("loopback" in before or "prometheus" in before), (path, i)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    script = shutil.which("sessionkeeper")
    if script is None:
        pytest.skip("the sessionkeeper console script is not installed")
    unit = (DEPLOY / "systemd/sessionkeeper.service").read_text()
    assert "/opt/sessionkeeper/bin/sessionkeeper" in unit
    path = tmp_path / "sessionkeeper.service"
    path.write_text(unit.replace("/opt/sessionkeeper/bin/sessionkeeper", script))
    status, output = run("systemd-analyze", "verify", "--man=no", str(path))
    # verify reports unknown keys and bad values as warnings with status 0: any output fails.
    assert status == 0 and not output.strip(), output


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            yield path.name, document


def k8s_resource(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for _, d in k8s_documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


def test_kubernetes_resources_validate_strictly_against_the_api_schemas() -> None:
    validated = []
    for name, document in k8s_documents():
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked field by field below
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")
        validated.append(document["kind"])
    assert sorted(validated) == ["Deployment", "Job", "Job", "Service"]


def test_kubernetes_validation_rejects_a_misspelt_field() -> None:
    deployment = k8s_resource("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_the_migration_job_included() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    # The roles Job is applied apart: it alone uses the administrator's credentials.
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "roles-job.yaml"}
    assert "migrate-job.yaml" in manifests
    assert sorted(kustomization["resources"]) == sorted(manifests)


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_one_image_tag_everywhere_the_project_version() -> None:
    """The Dockerfile's build command, compose and every Kubernetes container name the same
    image, tagged with the project's version; the migration Job is named after it (its pod
    template cannot change, so each release brings a Job of its own)."""
    tag = f"sessionkeeper:{project_version()}"
    dockerfile_text = (DEPLOY / "Dockerfile").read_text()
    built = re.findall(r"docker build .*-t (\S+)", dockerfile_text)
    assert built == [tag]
    images = {name: s["image"] for name, s in compose()["services"].items() if "build" in s}
    assert set(images) == {"roles", "migrate", "sessionkeeper", "sample-bot"}
    assert set(images.values()) == {tag}
    containers = [
        (name, c["image"])
        for name, document in k8s_documents()
        if document["kind"] in ("Deployment", "Job")
        for c in document["spec"]["template"]["spec"]["containers"]
    ]
    assert sorted(name for name, _ in containers) == [
        "deployment.yaml",
        "migrate-job.yaml",
        "roles-job.yaml",
    ]
    assert {image for _, image in containers} == {tag}
    (job,) = [d for name, d in k8s_documents() if name == "migrate-job.yaml"]
    assert job["metadata"]["name"] == "sessionkeeper-migrate-" + project_version().replace(".", "-")
    assert f"job/{job['metadata']['name']} " in (K8S / "migrate-job.yaml").read_text()


def test_deployment_probes_health_and_readiness_on_the_metrics_port() -> None:
    deployment = k8s_resource("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert env["SESSIONKEEPER_METRICS_HOST"]["value"] == "0.0.0.0"
    assert env["SESSIONKEEPER_METRICS_PORT"]["value"] == str(METRICS_PORT)
    # Schema changes belong to the migration Job.
    assert env["SESSIONKEEPER_MIGRATE_ON_START"]["value"] == "false"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts


def test_roles_and_migration_jobs_and_the_daemon_use_separate_logins() -> None:
    job = k8s_resource("Job", "sessionkeeper-migrate-" + project_version().replace(".", "-"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    roles_job = k8s_resource("Job", "sessionkeeper-roles")
    (setup,) = roles_job["spec"]["template"]["spec"]["containers"]
    assert setup["args"][:2] == ["roles", "setup"]
    deployment = k8s_resource("Deployment")
    (daemon,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == daemon["image"] == setup["image"]

    def secret(c: dict[str, Any]) -> Any:
        return next(e for e in c["env"] if e["name"] == "DATABASE_URL")["valueFrom"]

    # docs/roles.md: the superuser sets the roles up; migrate and the daemon log in apart.
    names = [secret(c)["secretKeyRef"]["name"] for c in (setup, container, daemon)]
    assert names == [
        "sessionkeeper-database-admin",
        "sessionkeeper-database-migrate",
        "sessionkeeper-database-daemon",
    ]


def test_service_monitor_scrapes_the_daemon_service_under_the_job_the_alerts_use() -> None:
    monitor = k8s_resource("ServiceMonitor")
    service = k8s_resource("Service")
    deployment = k8s_resource("Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # The operator names the scrape job after this label: the alerts select job="sessionkeeper".
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sessionkeeper"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "honorLabels", "scrapeTimeout"}
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert "honorLabels" not in endpoint
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


@needs_promtool
def test_plain_prometheus_scrape_config_for_kubernetes(tmp_path: Path) -> None:
    # Debian builds Prometheus without Kubernetes service discovery, so promtool checks
    # everything but the discovery block (a static target stands in for it); the next test
    # checks that block's fields and what its relabelling keeps.
    config = load_yaml(K8S / "prometheus-scrape.yml")
    for scrape in config["scrape_configs"]:
        assert scrape.pop("kubernetes_sd_configs")
        scrape["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    checked = tmp_path / "prometheus-scrape.yml"
    checked.write_text(yaml.safe_dump(config))
    status, output = run("promtool", "check", "config", str(checked))
    assert status == 0, output


def test_plain_prometheus_scrape_config_keeps_exactly_the_daemon_endpoints() -> None:
    """What promtool cannot check without Kubernetes discovery: the keep rule selects the
    Service's metrics port, under the job name and label handling the alerts expect."""
    (scrape,) = load_yaml(K8S / "prometheus-scrape.yml")["scrape_configs"]
    assert scrape["job_name"] == "sessionkeeper"
    assert "honor_labels" not in scrape
    assert [sd["role"] for sd in scrape["kubernetes_sd_configs"]] == ["endpoints"]
    (keep,) = [r for r in scrape["relabel_configs"] if r.get("action") == "keep"]
    service = k8s_resource("Service")
    labels = service["metadata"]["labels"]
    prefix = "__meta_kubernetes_service_label_"
    meta = {
        f"{prefix}{re.sub(r'[^a-zA-Z0-9_]', '_', name)}": value for name, value in labels.items()
    }
    (port,) = service["spec"]["ports"]
    meta["__meta_kubernetes_endpoint_port_name"] = port["name"]
    value = ";".join(meta[label] for label in keep["source_labels"])
    assert re.fullmatch(keep["regex"], value), (keep, value)
    meta["__meta_kubernetes_endpoint_port_name"] = "other"
    other = ";".join(meta[label] for label in keep["source_labels"])
    assert not re.fullmatch(keep["regex"], other)
