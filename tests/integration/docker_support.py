"""A Docker engine, a locally made base image and an offline wheel house, for test_image.py.

No image registry is reachable from CI, so nothing is pulled:

* Engine: one that already answers (``DOCKER_HOST`` or the default socket) is used as it is.
  Otherwise, as root with Debian's ``docker.io`` installed, a private ``dockerd`` is started on
  its own socket, data and run directories in a temporary directory, with no iptables rules and
  no bridge (containers use the host's network), and stopped at the end.
* Base image: ``debootstrap --variant=minbase`` writes a minimal Debian of the host's release
  with python3 and its venv module into a directory; the directory is packed into a tarball
  cached in ``CACHE_DIR`` (first run about 2-3 minutes, later runs reuse it) and loaded with
  ``docker import`` (a few seconds).
* Wheels: the build reaches no package index from inside its container (the machine's index
  settings and TLS certificates are the host's), so pip on the host downloads the wheels the
  image needs, for the base image's Python and C library, and a loopback HTTP server hands them
  to the build (``PIP_NO_INDEX=1``, ``PIP_FIND_LINKS``; see deploy/Dockerfile).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("SESSIONKEEPER_TEST_CACHE", "/var/cache/sessionkeeper-test"))
BASE_PACKAGES = ("python3", "python3-venv")
# Dropped from the base tarball: package downloads and lists, documentation.
ROOTFS_EXCLUDES = (
    "./var/cache/apt/archives/*.deb",
    "./var/lib/apt/lists/*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
)
ENGINE_START_SECONDS = 60


class DockerUnavailable(Exception):
    """No engine answers and none can be started here; the message says why."""


@dataclass
class Docker:
    """A Docker client bound to one engine."""

    client: str
    host: str | None

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.client, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        return result

    def answers(self) -> bool:
        try:
            return self.run("version", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def _client_beside(dockerd: str) -> str:
    """The client shipped with ``dockerd`` (Debian: /usr/bin/docker beside /usr/sbin/dockerd).

    It drives the engine's built-in BuildKit; a newer client found first on PATH may want a
    ``buildx`` plug-in the machine does not have.
    """
    packaged = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    return str(packaged) if packaged.exists() else (shutil.which("docker") or "docker")


@contextlib.contextmanager
def docker_engine() -> Iterator[Docker]:
    """An engine that answers: the existing one, or a private dockerd started (and stopped) here."""
    existing = shutil.which("docker")
    if existing and Docker(existing, os.environ.get("DOCKER_HOST")).answers():
        yield Docker(existing, os.environ.get("DOCKER_HOST"))
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise DockerUnavailable(
            "no Docker engine answers and none can be started here "
            "(needs root and dockerd: apt-get install docker.io)"
        )
    base = Path(tempfile.mkdtemp(prefix="sk-docker-"))
    host = f"unix://{base}/docker.sock"
    log_path = base / "dockerd.log"
    command = [
        dockerd,
        f"--host={host}",
        f"--data-root={base}/data",
        f"--exec-root={base}/exec",
        f"--pidfile={base}/dockerd.pid",
        # No network set-up of its own: containers share the host's network (--network host).
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    docker = Docker(_client_beside(dockerd), host)
    try:
        deadline = time.monotonic() + ENGINE_START_SECONDS
        while not docker.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise DockerUnavailable(
                    f"dockerd did not start (exit {process.poll()}):\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.2)  # waiting for a process to come up, not controlling time
        yield docker
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


def _unmount_below(directory: Path) -> None:
    """Unmount what dockerd left mounted under ``directory`` (its network namespace file)."""
    prefix = f"{directory}/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount_point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)


def _host_release() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise DockerUnavailable("cannot tell the host's Debian release for debootstrap")


def base_tarball() -> Path:
    """The cached base rootfs tarball, made with debootstrap on first use (under a file lock)."""
    release = _host_release()
    tarball = CACHE_DIR / f"debian-{release}-{'-'.join(BASE_PACKAGES)}.tar"
    if tarball.exists():
        return tarball
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise DockerUnavailable("debootstrap is not installed (apt-get install debootstrap)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it right now
        if tarball.exists():
            return tarball
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        try:
            # Debian's default mirror and keyring, as apt on the host uses them.
            subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    release,
                    str(rootfs),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=1200,
            )
            partial = tarball.with_suffix(".partial")
            excludes = [f"--exclude={pattern}" for pattern in ROOTFS_EXCLUDES]
            subprocess.run(
                ["tar", "-C", str(rootfs), "-cf", str(partial), *excludes, "."],
                check=True,
                timeout=600,
            )
            partial.rename(tarball)
        except subprocess.CalledProcessError as exc:
            raise DockerUnavailable(
                f"debootstrap failed:\n{(exc.stdout or '')[-2000:]}{(exc.stderr or '')[-2000:]}"
            ) from None
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def import_base_image(docker: Docker, tag: str) -> str:
    """Load the cached base rootfs into the engine as ``tag``."""
    docker.run("import", str(base_tarball()), tag, timeout=300)
    return tag


@dataclass(frozen=True)
class Platform:
    """What the base image's Python accepts, for ``pip download``."""

    python: str  # "3.11"
    glibc: tuple[int, int]
    machine: str

    def pip_platforms(self) -> list[str]:
        # Every manylinux tag the image's C library can load (pip does not widen them itself).
        major, minor = self.glibc
        return [f"manylinux_{major}_{m}_{self.machine}" for m in range(5, minor + 1)]


def image_platform(docker: Docker, image: str) -> Platform:
    probe = (
        "import platform, sys; "
        "print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1], platform.machine())"
    )
    output = docker.run("run", "--rm", "--network", "none", image, "python3", "-c", probe).stdout
    python, glibc, machine = output.split()
    major, minor = glibc.split(".")[:2]
    return Platform(python, (int(major), int(minor)), machine)


def download_wheels(platform: Platform, dest: Path) -> None:
    """Every wheel the image's ``pip install .`` needs, fetched by the host's pip."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        platform.python,
        "--implementation",
        "cp",
        *(f"--platform={tag}" for tag in platform.pip_platforms()),
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """An HTTP URL on loopback listing ``directory`` (pip's --find-links reads the listing)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
