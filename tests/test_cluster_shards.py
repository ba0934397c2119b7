"""One logical queue over three shards on a real Redis Cluster (3 primaries, 3 replicas): the
shards live on different primaries, each shard's keys in its own slot, producers spread over
them, consumers serve all of them, and status and dead letters are summed and per shard."""

from __future__ import annotations

import json
from collections import Counter

from cluster_fixtures import redis_cluster
from test_cluster import queue_keys, work_left

from conftest import DaemonFactory, wait_until
from daemon.keys import shard_names
from tools.harness.cluster import RedisCluster

__all__ = ["redis_cluster"]
HANDLER = ("--handler", "handlers_for_tests:record")
SHARDED = ("--queue", "{orders}", "--shards", "3")
SHARDS = shard_names("{orders}", 3)


def test_a_sharded_queue_spreads_over_the_primaries_and_drains_once_each(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    url = ("--redis-url", redis_cluster.url)
    nodes = {redis_cluster.node_of(shard).port for shard in SHARDS}
    assert len(nodes) == 3  # {orders:0}, {orders:1}, {orders:2}: one shard per primary
    bodies = [f"task-{i}" for i in range(600)] + ["fail:poison"]
    pushed = taskd.run("enqueue", *url, *SHARDED, *bodies)
    assert pushed.returncode == 0, pushed.stderr
    depths = [redis_cluster.node_of(s).client().llen(s) for s in SHARDS]
    assert sum(depths) == 601 and max(depths) - min(depths) <= 2, depths  # runs of 201
    taskd.consume(
        redis_cluster.url, *SHARDED, *HANDLER, "--worker-id", "one", "--max-attempts", "1"
    )
    taskd.consume(redis_cluster.url, *SHARDED, *HANDLER, "--worker-id", "two", "--prefetch", "20")
    wait_until(lambda: len(taskd.done_bodies()) >= 600, 40, "600 tasks done")
    assert Counter(taskd.done_bodies()) == Counter(bodies[:-1])  # each exactly once
    for shard in SHARDS:
        wait_until(lambda s=shard: not work_left(redis_cluster, s), 10, f"{shard} drained")
        assert f"{shard}:workers" in queue_keys(redis_cluster, shard)  # all in the shard's slot
    status = taskd.run("status", *url, *SHARDED, "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["queue"], row["pending"], row["processing"], row["dead"]) == ("{orders}", 0, 0, 1)
    assert sorted(s["queue"] for s in row["shards"]) == sorted(SHARDS)
    assert {w["worker"] for w in row["workers"]} == {"one", "two"}
    (letter,) = [
        json.loads(line) for line in taskd.run("dead", "list", *url, *SHARDED).stdout.splitlines()
    ]
    assert letter["body"] == "fail:poison" and letter["shard"] in SHARDS
