"""deploy/Dockerfile built and run on a real Docker engine (see docker_support.py for how the
engine, the base image and the wheels are had without any image registry).

The image is built once per run from a Debian made with debootstrap (``BASE_IMAGE``), with the
wheels served from loopback. Then the daemon container migrates and serves the test's
PostgreSQL (an embedded server listening on loopback TCP; the containers share the host's
network), its /metrics is scraped over HTTP, ``docker stop`` (SIGTERM) ends it with exit status
0, and without a database URL it says in one line that DATABASE_URL is required.

Cost on 2 busy cores: the first run makes the base tarball with debootstrap (about 2.5 minutes,
cached in /var/cache/sessionkeeper-test); every run then imports it, downloads the wheels and
builds the image (about a minute together) and runs the containers (seconds each).
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import TEST_SERVER_OPTIONS
from docker_support import (
    ROOT,
    Docker,
    DockerUnavailable,
    docker_engine,
    download_wheels,
    image_platform,
    import_base_image,
    serve_directory,
)
from prometheus_client.parser import text_string_to_metric_families
from tool_support import unavailable

from sessionkeeper.admin import migrate
from sessionkeeper.admin.embedded import NO_EMBEDDED_SERVER, EmbeddedPostgres
from sessionkeeper.jobs import JOB_NAMES

# Slow, and the first run also makes the base image (debootstrap): longer than the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

TAG = f"sessionkeeper-test:{uuid.uuid4().hex[:8]}"
BASE_TAG = "sessionkeeper-test-base:latest"


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    try:
        with docker_engine() as engine:
            yield engine
    except DockerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = import_base_image(docker, BASE_TAG)
    wheels = tmp_path_factory.mktemp("wheels")
    download_wheels(image_platform(docker, base), wheels)
    with serve_directory(wheels) as wheel_url:
        docker.run(
            "build",
            "--network=host",  # the build's pip reaches the wheel server on loopback
            "--file",
            str(ROOT / "deploy/Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-arg",
            f"PIP_FIND_LINKS={wheel_url}",
            "--tag",
            TAG,
            str(ROOT),
            timeout=900,
        )
    yield TAG
    docker.run("rmi", "--force", TAG, check=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def tcp_database_url() -> Iterator[str]:
    """A database on an embedded server listening on loopback TCP, reachable from a container
    on the host's network (the suite's shared server listens on a Unix socket only)."""
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="sessionkeeper-image-"))
    server = EmbeddedPostgres(
        base,
        server_options={**TEST_SERVER_OPTIONS, "listen_addresses": "127.0.0.1", "port": str(port)},
    )
    server.start()
    url = f"postgresql://postgres@127.0.0.1:{port}/{{}}?sslmode=disable"
    try:
        with psycopg.connect(url.format("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE image")
        yield url.format("image")
    finally:
        server.stop(force=True)
        shutil.rmtree(base, ignore_errors=True)


def wait_for_log(
    docker: Docker, container: str, pattern: str, timeout: float = 90
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        result = docker.run("logs", container)
        logs = result.stdout + result.stderr
        found = re.search(pattern, logs)
        if found:
            return found
        state = docker.run("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        assert state == "running" and time.monotonic() < deadline, (
            f"no {pattern!r} in the logs of a {state} container:\n{logs[-3000:]}"
        )
        time.sleep(0.2)  # waiting for a process to come up, not controlling time


def test_without_a_database_url_the_image_says_database_url_is_required(
    docker: Docker, image: str
) -> None:
    result = docker.run("run", "--rm", "--network", "none", image, "run", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"sessionkeeper: {NO_EMBEDDED_SERVER}"]
    assert "DATABASE_URL" in NO_EMBEDDED_SERVER
    assert "SESSIONKEEPER_EMBEDDED_DIR" not in result.stderr


def test_the_image_runs_as_its_non_root_user(docker: Docker, image: str) -> None:
    result = docker.run("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert result.stdout.strip() == "10001"


def test_the_daemon_container_migrates_serves_metrics_and_stops_cleanly_on_sigterm(
    docker: Docker, image: str, tcp_database_url: str
) -> None:
    environment = ["--env", f"DATABASE_URL={tcp_database_url}"]
    migrated = docker.run("run", "--rm", "--network", "host", *environment, image, "migrate")
    assert f"to {migrate.head_revision()}" in migrated.stdout, migrated.stdout + migrated.stderr

    container = docker.run(
        "run",
        "--detach",
        "--network",
        "host",
        *environment,
        # A free port chosen by the daemon and logged: no clash with anything on the host.
        "--env",
        "SESSIONKEEPER_METRICS_HOST=127.0.0.1",
        "--env",
        "SESSIONKEEPER_METRICS_PORT=0",
        image,
    ).stdout.strip()
    try:
        port = wait_for_log(docker, container, r"metrics on http://127\.0\.0\.1:(\d+)/metrics")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as ready:
            assert ready.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        samples = {
            (sample.name, sample.labels.get("job_name"), sample.labels.get("outcome"))
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }
        for job in JOB_NAMES:
            for outcome in ("success", "failure", "skipped", "stopped"):
                assert ("sessionkeeper_job_runs_total", job, outcome) in samples, (job, outcome)

        docker.run("stop", "--time", "30", container, timeout=60)
        state = docker.run(
            "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", container
        ).stdout.split()
        assert state == ["0", "false"]
        logs = docker.run("logs", container)
        assert "sessionkeeper stopped" in logs.stdout + logs.stderr
    finally:
        docker.run("rm", "--force", container, check=False)
