"""A real multi-node Ray cluster on this machine, started the way users start one: `ray start
--head`, then `ray start --address=...` for each further node, with token authentication.

Every node gets its own ports (the machine may run other clusters); the worker nodes share
the head's temporary folder, as they do when started without --temp-dir on one machine.
The token lives in a file of the cluster's folder (RAY_AUTH_TOKEN_PATH), so nothing in the
user's ~/.ray changes. Stopping stops only this cluster's processes: each `ray start
--block` process (which takes its node down with it), then anything left that still names
the cluster's folder on its command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.engine.jobrun import processes_named

START_TIMEOUT_S = 120


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def free_port_range(size: int) -> tuple[int, int]:
    """A block of `size` ports none of which is in use now (for a node's workers)."""
    for _ in range(200):
        start = int.from_bytes(os.urandom(2), "big") % 20000 + 20000
        if all(_bindable(port) for port in range(start, start + size)):
            return start, start + size - 1
    raise RuntimeError("no free port range found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Node:
    process: subprocess.Popen
    node_manager_port: int
    resources: dict[str, float]
    log: Path

    def raylet_pid(self) -> int:
        found = [
            pid
            for pid in processes_named(f"--node_manager_port={self.node_manager_port}")
            if "raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        ]
        if len(found) != 1:
            raise AssertionError(f"expected one raylet on port {self.node_manager_port}: {found}")
        return found[0]


@dataclass
class LocalCluster:
    root: Path
    env: dict[str, str]
    gcs_port: int = 0
    dashboard_port: int = 0
    nodes: list[Node] = field(default_factory=list)

    @staticmethod
    def create() -> LocalCluster:
        # Ray's socket paths must stay short: a folder directly under the temporary root.
        root = Path(tempfile.mkdtemp(prefix="sae-ray-", dir="/tmp"))
        token = root / "auth_token"
        token.write_text(uuid.uuid4().hex)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
        }
        env.pop("RAY_ADDRESS", None)
        return LocalCluster(root=root, env=env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, *, num_cpus: int) -> Node:
        ports = free_ports(10)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        args = [
            "--head",
            f"--port={ports[0]}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports[1]}",
            f"--ray-client-server-port={ports[2]}",
            f"--temp-dir={self.root / 'ray'}",
        ]
        node = self._start(args, ports[3:], num_cpus=num_cpus, resources={}, name="head")
        self.wait_for_nodes(1)
        return node

    def add_node(
        self, *, num_cpus: int, resources: dict[str, float], prefix: list[str] | None = None
    ) -> Node:
        """A worker node; `prefix` wraps the command (e.g. a private mount namespace)."""
        expected = len(self.alive_nodes()) + 1
        node = self._start(
            [f"--address={self.address}"],
            free_ports(7),
            num_cpus=num_cpus,
            resources=resources,
            name=f"node{len(self.nodes)}",
            prefix=prefix,
        )
        self.wait_for_nodes(expected)
        return node

    def _start(
        self,
        args: list[str],
        ports: list[int],
        *,
        num_cpus: int,
        resources: dict[str, float],
        name: str,
        prefix: list[str] | None = None,
    ) -> Node:
        low, high = free_port_range(64)
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            *args,
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
        ]
        log = self.root / f"{name}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [*(prefix or []), *command],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        node = Node(process=process, node_manager_port=ports[0], resources=resources, log=log)
        self.nodes.append(node)
        return node

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "ray"), *args],
            capture_output=True,
            text=True,
            env={**self.env, "RAY_ADDRESS": self.dashboard},
            timeout=timeout,
        )

    def alive_nodes(self) -> list[dict]:
        if not self.dashboard_port:
            return []
        result = self.ray("list", "nodes", "--format=json", "--limit=100", timeout=60)
        if result.returncode != 0 or not result.stdout.lstrip().startswith("["):
            return []  # not up yet ("No resource in the cluster")
        return [node for node in json.loads(result.stdout) if node["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.alive_nodes()) < count:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise AssertionError(f"ray start failed:\n{node.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not reach {count} nodes")
            time.sleep(1)

    def node_id_with(self, resource: str) -> str:
        (node,) = [n for n in self.alive_nodes() if resource in n["resources_total"]]
        return str(node["node_id"])

    def stop_node(self, node: Node, grace_s: float = 60) -> None:
        if node.process.poll() is None:
            os.killpg(node.process.pid, signal.SIGTERM)
        try:
            node.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()

    def stop(self) -> None:
        # Whatever outlives a short grace is killed below: the cluster is going away whole.
        for node in reversed(self.nodes):
            self.stop_node(node, grace_s=5)
        for pid in processes_named(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
