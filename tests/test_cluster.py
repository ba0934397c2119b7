"""taskd on a real Redis Cluster (3 primaries, 3 replicas; tools/harness/cluster.py).

One cluster serves the whole module; each test uses a queue of its own, named with a hash
tag so that all its keys share one slot.
"""

from __future__ import annotations

from cluster_fixtures import redis_cluster

from tools.harness.cluster import RedisCluster

__all__ = ["redis_cluster"]


def test_cluster_forms_with_every_slot_served(redis_cluster: RedisCluster) -> None:
    client = redis_cluster.client()
    try:
        assert client.cluster_info()["cluster_state"] == "ok"
        primaries = {n.port for n in client.get_primaries()}
        roles = [node.client().execute_command("ROLE")[0] for node in redis_cluster.nodes]
        assert len(primaries) == 3 and roles.count(b"slave") == 3
        client.set("{probe}:a", "1")
        assert redis_cluster.node_of("{probe}:a").port in primaries
    finally:
        client.close()
