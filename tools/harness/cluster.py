"""A Redis Cluster of redis-server children (3 primaries, 3 replicas) on free loopback ports.

Each node is a `RedisServer` started with ``--cluster-enabled yes`` in a directory of its own;
``redis-cli --cluster create ... --cluster-replicas 1`` assigns the slots and the replicas.
Fewer than 3 primaries (which redis-cli refuses), or given slots on given primaries
(``slots={slot: primary index}``), are formed by hand instead (`tools.harness.cluster_form`:
ADDSLOTSRANGE, MEET, REPLICATE). Used by tests/test_cluster.py (one cluster per module:
creating one takes a few seconds) and scripts/bench_cluster.py (1, 2, 3 primaries, no
replicas). Never port 6379, never a node the harness did not start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import ClusterNode

from tools.harness import cluster_form
from tools.harness.ports import free_port_block
from tools.harness.redis_server import RedisServer, RedisStartError

NODE_TIMEOUT_MS = 2000
BUS_OFFSET = 50
TLS_OFFSET = 25  # with `tls`: each node's TLS port is its port + this (below the bus ports)


@dataclass(frozen=True)
class ClusterTls:
    """Certificate files for a TLS cluster: clients, the cluster bus and replication."""

    cert: Path
    key: Path
    ca: Path


class ClusterStartError(RuntimeError):
    """The cluster did not form in time (redis-cli's output or a node's log says why)."""


class RedisCluster:
    """`primaries` primaries, each with `replicas` replicas, on ports P*100 .. P*100+n-1.

    The first `primaries` nodes are the primaries (in order: primary i is ``nodes[i]``), the
    replicas follow. `slots` (slot -> primary index) puts those slots on those primaries; the
    others are spread in even contiguous ranges, as redis-cli does.
    """

    def __init__(
        self,
        workdir: Path,
        primaries: int = 3,
        replicas: int = 1,
        password: str | None = None,
        slots: Mapping[int, int] | None = None,
        tls: ClusterTls | None = None,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs a primary or more, and 0 or more replicas each")
        self.workdir = workdir
        self.password = password
        self.primaries = primaries
        self.replicas = replicas
        self.slots = dict(slots or {})
        self.tls = tls
        cluster_form.owners(primaries, self.slots)  # a bad placement fails here, not at start
        count = primaries * (1 + replicas)
        if count > TLS_OFFSET:
            raise ValueError(f"at most {TLS_OFFSET} nodes")
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
            *self._tls_args(port),
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

    def _tls_args(self, port: int) -> tuple[str, ...]:
        """TLS on a port of its own, for clients, the cluster bus and replication; the plain
        port stays open for the harness (forming the cluster, the tests' own checks)."""
        if self.tls is None:
            return ()
        files = ("--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key)
        ca = ("--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no")
        both = ("--tls-cluster", "yes", "--tls-replication", "yes")
        return ("--tls-port", str(port + TLS_OFFSET), *map(str, files + ca), *both)

    @property
    def tls_url(self) -> str:
        """A taskd cluster URL over TLS naming the first three nodes' TLS ports."""
        nodes = ",".join(f"localhost:{n.port + TLS_OFFSET}" for n in self.nodes[:3])
        auth = f":{self.password}@" if self.password else ""
        return f"rediss+cluster://{auth}{nodes}/"

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
        return self.launch().join(timeout)

    def launch(self) -> RedisCluster:
        """Start every node and return once each answers (not a cluster yet: `join` forms it).
        Launching several clusters, then joining each, overlaps their ~2 s of start-up."""
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_answering(10)
        return self

    def join(self, timeout: float = 30.0) -> RedisCluster:
        """Form the launched nodes into the cluster; return once every node says it is ok
        (cluster_state:ok, every slot served, every node known) and every replica is in sync."""
        if self.primaries < 3 or self.slots:
            self._form_by_hand()
        else:
            self._create_with_redis_cli(timeout)
        self.wait_ok(timeout)
        deadline = time.monotonic() + timeout
        while not self.known_by_all():
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"nodes did not all meet within {timeout:g} s")
            time.sleep(0.05)
        self.wait_replicas_synced(timeout)
        return self

    def _form_by_hand(self) -> None:
        primaries = self.nodes[: self.primaries]
        cluster_form.form(
            primaries,
            self.nodes[self.primaries :],
            cluster_form.slot_ranges(self.primaries, self.slots),
            lambda node: node.port + BUS_OFFSET,
        )

    def _create_with_redis_cli(self, timeout: float) -> None:
        cli = shutil.which("redis-cli")
        if not cli:
            raise RedisStartError("redis-cli not found on PATH (apt-get install redis-tools)")
        args = [cli, *(("-a", self.password, "--no-auth-warning") if self.password else ())]
        args += ["--cluster", "create", *self.addresses]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterStartError(f"redis-cli --cluster create failed: {done.stdout[-800:]!r}")

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

    def known_by_all(self) -> bool:
        """Every live node knows every other one (the MEETs of a hand-formed cluster gossiped)."""
        count = len(self.live())
        for node in self.live():
            try:
                client = node.client(socket_timeout=1, socket_connect_timeout=1)
                try:
                    known = int(client.cluster("info").get("cluster_known_nodes", 0))
                finally:
                    client.close()
            except redis.RedisError:
                return False
            if known < count:
                return False
        return True

    def place(self, placement: Mapping[int, int]) -> None:
        """Put each slot of `placement` (slot -> primary index) on that primary, in a running
        cluster: the slots must be empty (CLUSTER SETSLOT NODE on every node); returns once
        every node agrees."""
        primaries = self.nodes[: self.primaries]
        cluster_form.place_slots(self.live(), {s: primaries[p] for s, p in placement.items()})
        self.slots.update(placement)
        deadline = time.monotonic() + 10
        while not all(
            cluster_form.slot_served_by(node, slot) == primaries[p].port
            for slot, p in placement.items()
            for node in self.live()
        ):
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"slots {sorted(placement)} not placed within 10 s")
            time.sleep(0.05)

    @staticmethod
    def reshard_argv(source: RedisServer, target: RedisServer, *more: str) -> list[str]:
        """`redis-cli --cluster reshard` moving one slot (the lowest) of `source` to `target`,
        unattended; `more` adds options (e.g. ``--cluster-pipeline 1``)."""
        ids = [cluster_form.node_id(source), cluster_form.node_id(target)]
        moves = ["--cluster-from", ids[0], "--cluster-to", ids[1], "--cluster-slots", "1"]
        args = ["--cluster", "reshard", f"127.0.0.1:{source.port}", *moves, "--cluster-yes"]
        return ["redis-cli", *args, *more]

    def primary(self, index: int) -> RedisServer:
        """Primary `index` as formed (before any failover)."""
        return self.nodes[index]

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
