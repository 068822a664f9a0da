"""A real 3-master Redis Cluster for the tests: three `redis-server --cluster-enabled yes`
on free 127.0.0.1 ports, joined by `redis-cli --cluster create`, stopped after.

CI installs redis-server and redis-cli (.ci/run); a machine without them fails these tests
loudly rather than skipping them, so a skip can never pass for coverage.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_cluster_port(taken: set[int]) -> int:
    """A free 127.0.0.1 port whose cluster bus port (port + 10000) is free too: a cluster
    node's port must be at most 55535."""
    for _ in range(1000):
        port = random.randint(20000, 55535)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update((port, port + 10000))
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _ask(port: int, command: bytes) -> bytes:
    """One inline command to one node, its raw reply (b"" when it cannot be reached)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(command + b"\r\n")
            s.settimeout(0.5)
            return s.recv(65536)
    except OSError:
        return b""


class RedisCluster:
    """Three masters, no replicas (each owns a third of the slots)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are not installed: `apt-get install redis-server"
                " redis-tools` (.ci/run does)"
            )
        self.server = server
        self.cli = cli
        self.directory = directory
        taken: set[int] = set()
        self.ports = [free_cluster_port(taken) for _ in range(masters)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                self.server, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                "--dir", str(node_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _ask(port, b"PING").startswith(b"+PONG"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server (cluster node) did not start on port {port}")
            time.sleep(0.02)  # waiting for a server to come up, not for a result

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node says `cluster_state:ok`."""
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p, proc in self.processes.items() if proc.poll() is None]
            if all(b"cluster_state:ok" in _ask(p, b"CLUSTER INFO") for p in live):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)  # waiting for the cluster to settle, not for a result

    def dbsize(self, port: int) -> int:
        reply = _ask(port, b"DBSIZE")
        return int(reply[1:].strip())

    def flush(self) -> None:
        for port, proc in self.processes.items():
            if proc.poll() is None:
                _ask(port, b"FLUSHALL")

    def kill(self, port: int) -> None:
        proc = self.processes[port]
        proc.kill()
        proc.wait()

    def restart(self, port: int) -> None:
        """A killed master back on its port (its nodes.conf keeps its slots)."""
        self.start_node(port)
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.processes.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
