"""A Redis Cluster of redis-server children (3 primaries, 3 replicas) on free loopback ports.

Each node is a `RedisServer` started with ``--cluster-enabled yes`` in a directory of its own;
``redis-cli --cluster create ... --cluster-replicas 1`` assigns the slots and the replicas.
Used by tests/test_cluster.py (one cluster per module: creating one takes a few seconds).
Never port 6379, never a node the harness did not start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import ClusterNode

from tools.harness.ports import free_port_block
from tools.harness.redis_server import RedisServer, RedisStartError

NODE_TIMEOUT_MS = 2000
BUS_OFFSET = 50


class ClusterStartError(RuntimeError):
    """The cluster did not form in time (redis-cli's output or a node's log says why)."""


class RedisCluster:
    """`primaries` primaries, each with `replicas` replicas, on ports P*100 .. P*100+n-1."""

    def __init__(
        self, workdir: Path, primaries: int = 3, replicas: int = 1, password: str | None = None
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.primaries = primaries
        self.replicas = replicas
        count = primaries * (1 + replicas)
        # each node's cluster bus on port + BUS_OFFSET (not redis's +10000: the ephemeral range)
        base = free_port_block(BUS_OFFSET + count) * 100
        self.nodes = [self._node(base + n) for n in range(count)]

    def _node(self, port: int) -> RedisServer:
        workdir = self.workdir / f"node-{port}"
        auth = ("--masterauth", self.password) if self.password else ()
        return RedisServer(
            workdir,
            port,
            *auth,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(workdir / "nodes.conf"),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--cluster-port",
            str(port + BUS_OFFSET),
            "--repl-diskless-sync-delay",  # replicas in sync at once, not after 5 s
            "0",
            password=self.password,
        )

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """A taskd cluster URL naming the first three nodes (any one is enough to start)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}{','.join(self.addresses[:3])}/"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        """Start every node, create the cluster, return once every node says cluster_state:ok."""
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_answering(10)
        cli = shutil.which("redis-cli")
        if not cli:
            raise RedisStartError("redis-cli not found on PATH (apt-get install redis-tools)")
        args = [cli, *(("-a", self.password, "--no-auth-warning") if self.password else ())]
        args += ["--cluster", "create", *self.addresses]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterStartError(f"redis-cli --cluster create failed: {done.stdout[-800:]!r}")
        self.wait_ok(timeout)
        self.wait_replicas_synced(timeout)
        return self

    def wait_replicas_synced(self, timeout: float) -> None:
        """Return once every live replica is connected to its primary and in sync."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [n.port for n in self.live() if not self._role_ready(n)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"replicas not in sync within {timeout:g} s: {waiting}")
            time.sleep(0.05)

    def _role_ready(self, node: RedisServer) -> bool:
        try:
            client = node.client(socket_timeout=1, socket_connect_timeout=1)
            try:
                role = client.execute_command("ROLE")
            finally:
                client.close()
        except redis.RedisError:
            return False
        if role[0] in (b"master", "master"):
            return len(role[2]) >= self.replicas
        return role[3] in (b"connected", "connected")

    def wait_ok(self, timeout: float, nodes: list[RedisServer] | None = None) -> None:
        """Return once every live node (or each of `nodes`) says cluster_state:ok and knows
        every slot; ClusterStartError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [n.port for n in (nodes or self.live()) if not self.node_ok(n)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"cluster not ok within {timeout:g} s on ports {waiting}")
            time.sleep(0.05)

    @staticmethod
    def node_ok(node: RedisServer) -> bool:
        try:
            client = node.client(socket_timeout=1, socket_connect_timeout=1)
            try:
                info = client.cluster("info")
            finally:
                client.close()
        except redis.RedisError:
            return False
        return info.get("cluster_state") == "ok" and str(info.get("cluster_slots_ok")) == "16384"

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.pid is not None]

    def client(self) -> redis.RedisCluster:
        """A plain redis-py cluster client (for the tests' own checks), from the live nodes."""
        return redis.RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.live()],
            socket_timeout=1,  # short: a frozen node (SIGSTOP) must not hold up the checks
            socket_connect_timeout=1,
            password=self.password,
        )

    def node_of(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot now (its primary)."""
        client = self.client()
        try:
            port = int(client.get_node_from_key(key).port)
        finally:
            client.close()
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL): bounded."""
        for node in self.nodes:
            node.stop(grace=5)
