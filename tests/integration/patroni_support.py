"""A throwaway Patroni cluster on loopback for the failover tests: one etcd member and three
PostgreSQL 15 nodes from Debian's packages, run as an unprivileged user (PostgreSQL refuses
root), all started and stopped here.

Two things a container-like machine needs that a full OS does not:

* **Reaping.** Patroni starts the postmaster through a short-lived launcher process, so the
  postmaster is an orphan re-parented to PID 1. Where PID 1 does not reap (containers, these
  machines), a ``kill -9``-ed postmaster stays a zombie that Patroni still counts as running,
  and it never fails over. The harness makes the test process a child subreaper
  (``prctl(PR_SET_CHILD_SUBREAPER)``), so orphans become its children, and reaps the zombies
  among them (never the processes it owns through ``subprocess.Popen``, whose status the
  tests read).
* **Small settings.** Two shared cores: 16 MB shared buffers, few connections, one second
  loops.

Settings that matter for the tests and differ from production (see docs/high-availability.md):
``primary_start_timeout: 0`` (a crashed primary is failed over at once instead of being
restarted in place for up to 300 s), ``ttl: 10`` and ``loop_wait: 1`` (faster detection),
``synchronous_mode: true`` (an acknowledged commit is on a standby too).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.conninfo import make_conninfo

PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = os.environ.get("SESSIONKEEPER_EMBEDDED_USER", "sessionkeeper")
PR_SET_CHILD_SUBREAPER = 36
SUPERUSER_PASSWORD = "patroni-test"


def missing_tools() -> list[str]:
    """Debian packages the cluster needs that are not installed."""
    wanted = {
        "patroni": PATRONI,
        "etcd-server": ETCD,
        "postgresql-15": str(PG_BIN / "postgres"),
        "pgbouncer": PGBOUNCER,
    }
    return [package for package, path in wanted.items() if not os.access(path, os.X_OK)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _service_user() -> pwd.struct_passwd:
    """Who runs etcd and Patroni: as root, an unprivileged system user (PostgreSQL refuses
    root), created if missing; otherwise the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*command, SERVICE_USER], check=True)
        return pwd.getpwnam(SERVICE_USER)


# Patroni runs this on the node whose role changed (arguments: action, role, scope). On the
# new primary it repoints PgBouncer, when one runs from the cluster's directory, at this node
# and has it reload (SIGHUP): the production pattern without a virtual IP or HAProxy.
ROLE_CHANGE_CALLBACK = """#!/bin/sh
case "$2" in master|primary) ;; *) exit 0 ;; esac
[ -f {base}/pgbouncer.ini ] || exit 0
printf 'sessionkeeper = host=127.0.0.1 port={port} dbname=sessionkeeper\\n' \\
    > {base}/pgbouncer-databases.ini.new
mv {base}/pgbouncer-databases.ini.new {base}/pgbouncer-databases.ini
[ -f {base}/pgbouncer.pid ] && kill -HUP "$(cat {base}/pgbouncer.pid)"
exit 0
"""


class Reaper:
    """Makes this process a child subreaper and reaps its zombie children that no ``Popen``
    owns (orphans re-parented to it), until stopped."""

    def __init__(self, owned: set[int]) -> None:
        self.owned = owned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.reap()
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.reap()

    def reap(self) -> None:
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in self.owned:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state == "Z" and int(ppid) == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)


class Node:
    def __init__(self, cluster: PatroniCluster, index: int) -> None:
        self.name = f"node{index}"
        self.port = free_port()
        self.api_port = free_port()
        self.data_dir = cluster.base / self.name
        self.config = cluster.base / f"{self.name}.yml"
        self.log = cluster.base / f"{self.name}.log"
        self.callback = cluster.base / f"{self.name}-role-change.sh"
        self.process: subprocess.Popen[bytes] | None = None

    def api(self, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        return json.loads(text) if text.startswith("{") else text

    def status(self) -> dict[str, Any]:
        try:
            return dict(self.api("/patroni"))
        except (OSError, urllib.error.URLError, ValueError):
            return {}

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])


class PatroniCluster:
    """Three Patroni nodes and one etcd member on loopback, in a temporary directory."""

    def __init__(self, nodes: int = 3) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sk-patroni-"))
        self.user = _service_user()
        self.scope = f"sk{os.getpid()}"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.nodes = [Node(self, i) for i in range(nodes)]
        self.owned: set[int] = set()
        self.reaper = Reaper(self.owned)
        self.etcd: subprocess.Popen[bytes] | None = None
        self.pgbouncer: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        self.reaper.start()
        os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self.etcd = self._spawn(
            [
                ETCD,
                "--name=sk",
                f"--data-dir={self.base / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-cluster=sk=http://127.0.0.1:{self.etcd_peer_port}",
                "--log-level=warn",
            ],
            self.base / "etcd.log",
        )
        self._wait(lambda: self._etcd_ready(), timeout, "etcd did not start")
        for node in self.nodes:
            node.config.write_text(json.dumps(self._node_config(node), indent=1))
            node.callback.write_text(ROLE_CHANGE_CALLBACK.format(base=self.base, port=node.port))
            node.callback.chmod(0o755)
            for path in (node.config, node.callback):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        # The first node bootstraps; the others then clone it (pg_basebackup).
        self.start_node(self.nodes[0])
        self._wait(lambda: self.leader() is not None, timeout, "no leader after bootstrap")
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_healthy(timeout)

    def start_node(self, node: Node) -> None:
        node.process = self._spawn([PATRONI, str(node.config)], node.log)

    def stop(self) -> None:
        processes = [self.pgbouncer] + [n.process for n in self.nodes] + [self.etcd]
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Postmasters whose Patroni died before stopping them.
        for node in self.nodes:
            with contextlib.suppress(OSError, ValueError):
                os.kill(node.postmaster_pid(), signal.SIGKILL)
        self.reaper.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        output = open(log, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base)}
        env["LANG"] = "C.UTF-8"
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            env=env,
            **as_user,
        )
        output.close()
        self.owned.add(process.pid)
        return process

    def _etcd_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.etcd_port}/health", timeout=2
            ) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _node_config(self, node: Node) -> dict[str, Any]:
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        return {
            "scope": self.scope,
            "namespace": "/sessionkeeper-test/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    # Fail a crashed primary over at once (Patroni's default, 300 s, restarts it
                    # in place first: the cluster then has no primary for that long).
                    "primary_start_timeout": 0,
                    # A commit is acknowledged only once a standby has it: no acknowledged turn
                    # is lost with the primary.
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "max_connections": 60,
                            "max_wal_senders": 6,
                            "max_replication_slots": 6,
                            "wal_keep_size": "64MB",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.base / f"{node.name}.pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                },
                "pg_hba": hba,
                "callbacks": {"on_role_change": str(node.callback), "on_start": str(node.callback)},
                "parameters": {
                    "shared_buffers": "16MB",
                    "max_worker_processes": 4,
                    "unix_socket_directories": str(self.base),
                    "fsync": "on",
                    "logging_collector": "off",
                },
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    # -- state ---------------------------------------------------------------------------------

    def leader(self) -> Node | None:
        for node in self.nodes:
            status = node.status()
            if status.get("role") in ("master", "primary") and status.get("state") == "running":
                return node
        return None

    def wait_healthy(self, timeout: float = 120, exclude: Node | None = None) -> Node:
        """Until one primary runs and every other node streams from it as a replica, with a
        synchronous standby chosen; returns the primary."""

        def healthy() -> Node | None:
            leader = self.leader()
            if leader is None:
                return None
            try:
                members = leader.api("/cluster")["members"]
            except (OSError, ValueError, KeyError):
                return None
            running = [m for m in members if m.get("state") in ("running", "streaming")]
            sync = [m for m in members if m.get("role") == "sync_standby"]
            return leader if len(running) == len(self.nodes) and sync else None

        return cast(Node, self._wait(healthy, timeout, "cluster not healthy"))

    def url(self, dbname: str = "postgres", **options: Any) -> str:
        """A multi-host URL listing every node; libpq picks the read-write one."""
        return make_conninfo(
            "",
            host=",".join("127.0.0.1" for _ in self.nodes),
            port=",".join(str(n.port) for n in self.nodes),
            dbname=dbname,
            user="postgres",
            password=SUPERUSER_PASSWORD,
            target_session_attrs="read-write",
            **options,
        )

    def switchover(self) -> Node:
        """Asks for a planned switchover (Patroni picks the synchronous standby); returns the
        node that was primary."""
        leader = self.leader()
        assert leader is not None
        leader.api("/switchover", "POST", {"leader": leader.name})
        return leader

    def kill_primary(self) -> Node:
        """``kill -9`` of the primary's postmaster; returns the node that was primary."""
        leader = self.leader()
        assert leader is not None
        os.kill(leader.postmaster_pid(), signal.SIGKILL)
        return leader

    def start_pgbouncer(self, settings: dict[str, str]) -> str:
        """PgBouncer (transaction pooling) in front of the cluster, pointed at the primary and
        repointed by the nodes' role-change callback; returns its URL."""
        leader = self.leader()
        assert leader is not None
        port = free_port()
        (self.base / "pgbouncer-databases.ini").write_text(
            f"sessionkeeper = host=127.0.0.1 port={leader.port} dbname=sessionkeeper\n"
        )
        (self.base / "pgbouncer-users.txt").write_text('"postgres" ""\n')
        lines = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.base / "pgbouncer-users.txt"),
            "pool_mode": "transaction",
            "max_client_conn": "100",
            "default_pool_size": "4",
            "logfile": str(self.base / "pgbouncer.log"),
            "pidfile": str(self.base / "pgbouncer.pid"),
            "ignore_startup_parameters": "extra_float_digits",
            **settings,
        }
        (self.base / "pgbouncer.ini").write_text(
            f"[databases]\n%include {self.base / 'pgbouncer-databases.ini'}\n[pgbouncer]\n"
            + "".join(f"{key} = {value}\n" for key, value in lines.items())
        )
        for path in self.base.glob("pgbouncer*"):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self.pgbouncer = self._spawn(
            [PGBOUNCER, str(self.base / "pgbouncer.ini")], self.base / "pgbouncer.out"
        )
        url = make_conninfo(
            "", host="127.0.0.1", port=port, dbname="sessionkeeper", user="postgres"
        )

        def accepting() -> bool:
            try:
                connect(url).close()
                return True
            except psycopg.OperationalError:
                return False

        self._wait(accepting, 30, "pgbouncer did not accept connections")
        return url

    def logs(self) -> str:
        parts = []
        for path in sorted(self.base.glob("*.log")):
            parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def _wait(self, condition: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(0.1)  # readiness polling, not time control
        raise TimeoutError(f"{what} within {timeout} s\n{self.logs()}")


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)
