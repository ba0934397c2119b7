"""taskd on a Redis Cluster over TLS (`rediss+cluster://`): every node, the cluster bus and
replication on TLS, the certificate verified against the CA given (real redis-servers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_security import make_ca, make_cert

from conftest import DaemonFactory, wait_until
from daemon import exitcodes
from daemon.keys import shard_names
from tools.harness.cluster import TLS_OFFSET, ClusterTls, RedisCluster

HANDLER = ("--handler", "handlers_for_tests:record")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca")
    server = make_cert(folder, ca, "server")
    return {"ca": ca[0], "rogue": make_ca(folder, "rogue")[0], "crt": server[0], "key": server[1]}


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]
) -> Iterator[RedisCluster]:
    tls = ClusterTls(cert=pki["crt"], key=pki["key"], ca=pki["ca"])
    cluster = RedisCluster(tmp_path_factory.mktemp("tls-cluster"), replicas=0, tls=tls)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_a_sharded_queue_is_produced_consumed_and_shown_over_tls_to_every_node(
    tls_cluster: RedisCluster, pki: dict[str, Path], taskd: DaemonFactory
) -> None:
    url = ("--redis-url", tls_cluster.tls_url, "--tls-ca-file", str(pki["ca"]))
    sharded = ("--queue", "{secure}", "--shards", "3")
    shards = shard_names("{secure}", 3)
    assert len({tls_cluster.node_of(s).port for s in shards}) == 3  # all three nodes in play
    bodies = [f"t{i}" for i in range(90)]
    pushed = taskd.run("enqueue", *url, *sharded, *bodies)
    assert pushed.returncode == 0, pushed.stderr
    taskd.consume(tls_cluster.tls_url, "--tls-ca-file", str(pki["ca"]), *sharded, *HANDLER)
    wait_until(lambda: len(taskd.done_bodies()) >= 90, 30, "90 tasks done over TLS")
    assert Counter(taskd.done_bodies()) == Counter(bodies)
    for node in tls_cluster.nodes:  # the consumer's connections arrived on each TLS port
        clients = node.client().client_list()
        ours = [c["laddr"] for c in clients if c["name"].startswith("taskd-claim:")]
        assert ours and set(ours) == {f"127.0.0.1:{node.port + TLS_OFFSET}"}, clients
    status = taskd.run("status", *url, *sharded)
    assert status.returncode == 0, status.stderr
    assert "queue {secure} (sum of 3 shards)" in status.stdout.decode()
    assert "pending 0  processing 0" in status.stdout.decode()


def test_a_cluster_whose_certificate_the_ca_does_not_sign_is_exit_78_in_one_line(
    tls_cluster: RedisCluster, pki: dict[str, Path], taskd: DaemonFactory
) -> None:
    url = ("--redis-url", tls_cluster.tls_url, "--tls-ca-file", str(pki["rogue"]))
    done = taskd.run("status", *url, "--queue", "{secure}")
    assert done.returncode == exitcodes.CONFIG, (done.stdout, done.stderr)
    (line,) = done.stderr.decode().strip().splitlines()
    assert "certificate" in line, line
