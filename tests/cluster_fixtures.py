"""The `redis_cluster` fixture: one 3-primary / 3-replica Redis Cluster per test module.

Import it into a test module (``from cluster_fixtures import redis_cluster``); creating a
cluster takes a few seconds, so the tests of one module share it and use queues of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.harness.cluster import RedisCluster


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A running cluster (cluster_state:ok on every node); every node stopped at the end."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
