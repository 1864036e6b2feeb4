"""A real Ray cluster on this machine (tests and ``bench.cluster``): a head and worker nodes.

Each node is ``ray start --block`` in its own session.

Every node is a ``ray start`` process of its own (with its raylet, object
store and workers), as on separate hosts: stopping one worker node (its
process group, as ``ray stop`` on that host would) leaves the head and the
other nodes running. Token authentication is on, the dashboard off. Ray
resolves ``--node-ip-address 127.0.0.1`` to the host's address and its gRPC
servers listen on every interface whatever the flag says (see README
"Running on a cluster": the token and a firewall guard them).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "ray")


class RayNode:
    """One ``ray start --block`` process group."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def stop(self, timeout: float = 10.0) -> None:
        """Stop this node and everything it started (its raylet, object store, workers)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL this node and everything it started, as the host's power loss would."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class RayCluster:
    """A head plus worker nodes on this machine, torn down by :meth:`stop`."""

    def __init__(self, workdir: Path | None = None) -> None:
        # socket paths must stay short (108 bytes): not under pytest's long tmp paths
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.workdir = workdir or self.temp
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self.token_file = self.workdir / "ray-token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # notice a lost worker node within seconds, not the default half minute
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
        )
        return env

    def _start(self, name: str, args: list[str]) -> RayNode:
        log = self.workdir / f"ray-{name}.log"
        process = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        return RayNode(name, process, log)

    def start(self) -> Self:
        """Start the head (no CPUs to offer: models go to worker nodes)."""
        self.head = self._start(
            "head",
            [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--include-dashboard=false",
                "--num-cpus",
                "0",
                "--temp-dir",
                str(self.temp),
            ],
        )
        head = self.head
        _wait(lambda: _port_open(self.port), 60, lambda: f"Ray head on {self.port}", head)
        return self

    def add_worker(self, resources: Mapping[str, float], num_cpus: int = 2) -> RayNode:
        """Start a worker node offering ``num_cpus`` and the custom ``resources``."""
        node = self._start(
            f"worker-{len(self.workers)}",
            [
                "--address",
                self.address,
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                str(num_cpus),
                "--resources",
                json.dumps(dict(resources)),
            ],
        )
        self.workers.append(node)
        _wait(lambda: self.live_nodes_with(resources) >= 1, 90, lambda: "worker node joined", node)
        return node

    def live_nodes_with(self, resources: Mapping[str, float]) -> int:
        """How many live nodes offer all of ``resources`` (asked by a short-lived driver)."""
        script = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
            "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))\n"
        )
        done = subprocess.run(
            [str(Path(RAY).parent / "python"), "-c", script],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        if done.returncode != 0:
            return 0
        nodes = json.loads(done.stdout.strip().splitlines()[-1])
        return sum(
            all(node.get(name, 0) >= amount for name, amount in resources.items()) for node in nodes
        )

    def stop(self) -> None:
        for node in self.workers:
            node.stop()
        if self.head is not None:
            self.head.stop()
        # anything that escaped its process group still names our temp dir or session
        subprocess.run(["pkill", "-9", "-f", str(self.temp)], check=False)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replica_pids(log_text: str, pipeline: str) -> list[int]:
    """The worker pids the node logged for ``pipeline``'s replicas ("replica N ready on H pid P")."""
    pids = []
    for line in log_text.splitlines():
        marker = f"pipeline {pipeline}: replica "
        if marker in line and " pid " in line:
            pids.append(int(line.split(" pid ", 1)[1].split(",", 1)[0]))
    return pids


def free_port() -> int:
    """A TCP port free on the loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _wait(
    ready: Callable[[], bool], timeout: float, what: Callable[[], str], node: RayNode
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if node.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what()} did not happen:\n{node.log.read_text()[-3000:]}")
        time.sleep(0.5)
