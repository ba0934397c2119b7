"""taskd on a real Redis Cluster (3 primaries, 3 replicas; tools/harness/cluster.py).

One cluster serves the whole module; each test uses a queue of its own, named with a hash
tag so that all its keys share one slot. The consumers are real `python -m daemon consume`
processes given the cluster URL alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from cluster_fixtures import redis_cluster

from conftest import DaemonFactory, free_port, wait_until
from tools.harness.cluster import RedisCluster

__all__ = ["redis_cluster"]
HANDLER = ("--handler", "handlers_for_tests:record")


def queue_keys(cluster: RedisCluster, queue: str) -> dict[str, int]:
    """Every key of `queue` (by name prefix) with its size, read on the node of its slot.

    Reading them all on that one node is the check that they share its slot: a key of the
    queue in another slot would live on another node (or the same, and be caught by KEYSLOT).
    """
    node = cluster.node_of(queue).client()
    keys = [k.decode() for k in node.keys(f"{queue}*")]
    slot = node.cluster("keyslot", queue)
    assert all(node.cluster("keyslot", k) == slot for k in keys), keys
    sizes = {}
    for key in keys:
        kind = node.type(key).decode()
        size = {"list": node.llen, "zset": node.zcard, "hash": node.hlen}.get(kind)
        sizes[key] = int(size(key)) if size else 1
    return sizes


def work_left(cluster: RedisCluster, queue: str) -> dict[str, int]:
    """Pending, processing, delayed and attempt keys that still hold something."""
    return {
        k: n
        for k, n in queue_keys(cluster, queue).items()
        if n and (k == queue or ":processing:" in k or k.endswith((":delayed", ":attempts")))
    }


def enqueue(taskd: DaemonFactory, cluster: RedisCluster, queue: str, *bodies: str) -> None:
    done = taskd.run("enqueue", "--redis-url", cluster.url, "--queue", queue, *bodies)
    assert done.returncode == 0, done.stderr


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


def test_a_queue_without_a_hash_tag_is_refused_on_a_cluster(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    for verb in (("consume", *HANDLER), ("enqueue", "x"), ("status",), ("dead", "list")):
        done = taskd.run(verb[0], "--redis-url", redis_cluster.url, "--queue", "orders", *verb[1:])
        assert done.returncode == 78, (verb, done.stderr)
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "a queue needs a hash tag, e.g. {orders}" in lines[0], lines


def test_a_consumer_started_while_no_node_answers_waits_instead_of_crashing(
    taskd: DaemonFactory,
) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/"
    daemon = taskd.consume(url, "--queue", "{early}", *HANDLER)
    daemon.wait_for_event("redis.disconnected", 15)
    assert daemon.proc.poll() is None  # an outage it retries, as on a single Redis
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0


def test_baseline_drain_on_two_consumers_all_acked_none_left(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    queue = "{drain}"
    bodies = [f"task-{i}" for i in range(300)]
    enqueue(taskd, redis_cluster, queue, *bodies)
    taskd.consume(redis_cluster.url, "--queue", queue, *HANDLER, "--worker-id", "one")
    taskd.consume(
        redis_cluster.url, "--queue", queue, *HANDLER, "--worker-id", "two", "--prefetch", "10"
    )
    wait_until(lambda: len(taskd.done_bodies()) >= 300, 30, "300 tasks done")
    assert Counter(taskd.done_bodies()) == Counter(bodies)  # each exactly once
    wait_until(lambda: not work_left(redis_cluster, queue), 5, "nothing left in flight")
    alive = {f"{queue}:alive:one", f"{queue}:alive:two", f"{queue}:workers"}
    # both heartbeats and the registry, read on the slot's node (one may start after the drain)
    wait_until(lambda: alive <= set(queue_keys(redis_cluster, queue)), 10, "both heartbeats")


def test_consumer_killed_its_task_recovered_by_a_peer(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    queue = "{orphans}"
    timing = ("--heartbeat-ttl", "2", "--recovery-interval", "1")
    enqueue(taskd, redis_cluster, queue, "slow:1:orphan")
    victim = taskd.consume(
        redis_cluster.url, "--queue", queue, *HANDLER, *timing, "--worker-id", "A"
    )
    wait_until(lambda: taskd.records(), 15, "A to start the task")
    taskd.consume(redis_cluster.url, "--queue", queue, *HANDLER, *timing, "--worker-id", "B")
    node = redis_cluster.node_of(queue).client()
    wait_until(lambda: node.exists(f"{queue}:alive:B"), 10, "B alive")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: "slow:1:orphan" in taskd.done_bodies(), 20, "B to finish the orphan")
    wait_until(lambda: not work_left(redis_cluster, queue), 5, "nothing left in flight")
    assert node.exists(f"{queue}:processing:A") == 0


def test_poison_task_dead_lettered_and_shown_by_status_and_dead_list(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    queue = "{poison}"
    enqueue(taskd, redis_cluster, queue, "fail:poison", "fine")
    taskd.consume(
        redis_cluster.url, "--queue", queue, *HANDLER, "--max-attempts", "3", "--worker-id", "w1"
    )
    node = redis_cluster.node_of(queue).client()
    wait_until(lambda: node.llen(f"{queue}:dead") == 1, 20, "one dead letter")
    entry = json.loads(node.lindex(f"{queue}:dead", 0))
    assert (entry["body"], entry["attempts"], entry["worker"]) == ("fail:poison", 3, "w1")
    wait_until(lambda: taskd.done_bodies() == ["fine"], 10, "the fine task done")
    wait_until(lambda: not work_left(redis_cluster, queue), 5, "nothing left in flight")
    status = taskd.run("status", "--redis-url", redis_cluster.url, "--queue", queue, "--json")
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)[0]
    assert (row["pending"], row["processing"], row["dead"]) == (0, 0, 1)
    assert [w["worker"] for w in row["workers"]] == ["w1"]
    listed = taskd.run("dead", "list", "--redis-url", redis_cluster.url, "--queue", queue)
    assert listed.returncode == 0, listed.stderr
    assert b"fail:poison" in listed.stdout
    requeued = taskd.run("dead", "requeue", "--redis-url", redis_cluster.url, "--queue", queue)
    assert requeued.returncode == 0 and b"requeued 1 " in requeued.stdout, requeued.stdout

    def attempts() -> int:
        return sum(1 for _, phase, b in taskd.records() if phase == "start" and b == "fail:poison")

    wait_until(lambda: attempts() == 6, 20, "3 more attempts after the requeue")
    wait_until(lambda: node.llen(f"{queue}:dead") == 1, 20, "dead-lettered again")


def test_sigterm_drains_the_task_in_hand_and_leaves_the_rest(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    queue = "{sigterm}"
    enqueue(taskd, redis_cluster, queue, "slow:1.5:draining", "not-started")
    daemon = taskd.consume(redis_cluster.url, "--queue", queue, *HANDLER, "--worker-id", "w1")
    wait_until(lambda: taskd.records(), 15, "the task to start")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert taskd.done_bodies() == ["slow:1.5:draining"]
    node = redis_cluster.node_of(queue).client()
    assert node.lrange(queue, 0, -1) == [b"not-started"]
    assert node.llen(f"{queue}:processing:w1") == 0
    assert node.exists(f"{queue}:alive:w1") == 0


def test_subscribe_receives_what_publish_sends_through_another_node(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    sub = taskd.start(
        "subscribe",
        "--redis-url",
        redis_cluster.url,
        "--channel",
        "news",
        *HANDLER,
        env=taskd.env(),
    )
    sub.wait_for_event("pubsub.subscribed", 15)
    # the publisher names only the last nodes: its PUBLISH may well land on another node
    other = f"redis+cluster://{','.join(redis_cluster.addresses[3:])}/"
    deadline = time.monotonic() + 10
    while "hello" not in taskd.done_bodies() and time.monotonic() < deadline:
        done = taskd.run("publish", "--redis-url", other, "--channel", "news", "hello")
        assert done.returncode == 0, done.stderr
        time.sleep(0.2)
    assert "hello" in taskd.done_bodies()


def test_replicated_pushes_and_a_durable_channel_on_a_cluster(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """--wait-replicas sends its WAIT on the push's node; --durable's MULTI goes to the
    node of the channel's list, which `subscribe --durable` consumes reliably."""
    url, wait = redis_cluster.url, ("--wait-replicas", "1", "--wait-timeout", "2")
    done = taskd.run("enqueue", "--redis-url", url, "--queue", "{replicated}", *wait, "x")
    assert done.returncode == 0, done.stderr
    assert redis_cluster.node_of("{replicated}").client().llen("{replicated}") == 1
    done = taskd.run("publish", "--redis-url", url, "--channel", "{feed}", "--durable", *wait, "m")
    assert done.returncode == 0, done.stderr
    taskd.start(
        "subscribe",
        "--redis-url",
        url,
        "--channel",
        "{feed}",
        "--durable",
        *HANDLER,
        env=taskd.env(),
    )
    wait_until(lambda: taskd.done_bodies() == ["m"], 15, "the durable message handled")
    wait_until(lambda: not work_left(redis_cluster, "{feed}:durable"), 5, "its list empty")


def test_web_enqueues_and_reports_the_queue_on_a_cluster(redis_cluster: RedisCluster) -> None:
    from daemon import config
    from daemon.web import create_app

    queue = "{web}"
    settings = config.load({"redis_url": redis_cluster.url, "queues": (queue,)}, env={})
    web = create_app(settings).test_client()
    posted = web.post("/api/tasks", json={"queue": queue, "body": "hi"})
    assert posted.status_code == 202, posted.get_data()
    assert web.get("/prodcons").status_code == 302
    assert web.get("/readyz").status_code == 200
    rows = web.get("/api/queues").get_json()["queues"]
    assert [(r["queue"], r["pending"]) for r in rows] == [(queue, 2)]
    assert redis_cluster.node_of(queue).client().llen(queue) == 2


def test_queue_slot_resharded_under_load_moved_and_ask_followed_nothing_lost(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """`redis-cli --cluster reshard` moves the queue's slot (slot 0: the first one the
    reshard takes from its node) to another primary while tasks are pushed and consumed:
    MOVED/ASK/TRYAGAIN replies are followed, the pair written at once falls back to the
    cluster client, nothing is lost."""
    queue = "{r6961}"  # hash slot 0
    source = redis_cluster.node_of(queue)
    target = next(
        n
        for n in redis_cluster.nodes
        if n.port != source.port and n.client().execute_command("ROLE")[0] == b"master"
    )
    first = [f"slow:0.005:a{i}" for i in range(200)]
    enqueue(taskd, redis_cluster, queue, *first)
    for worker in ("one", "two"):
        taskd.consume(
            redis_cluster.url, "--queue", queue, *HANDLER, "--worker-id", worker, "--prefetch", "5"
        )
    wait_until(lambda: len(taskd.done_bodies()) >= 20, 20, "20 tasks done before the reshard")
    pushing = [f"b{i}" for i in range(200)]
    producer = redis_cluster.client()
    reshard = subprocess.Popen(
        RedisCluster.reshard_argv(source, target, "--cluster-pipeline", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for body in pushing:  # pushed throughout the reshard (the client follows MOVED/ASK)
        producer.lpush(queue, body)
    output = reshard.communicate(timeout=30)[0]
    assert reshard.returncode == 0, output[-500:]
    wait_until(lambda: redis_cluster.node_of(queue).port == target.port, 10, "slot 0 moved")
    everything = set(first) | set(pushing)
    wait_until(lambda: everything <= set(taskd.done_bodies()), 40, "every task done")
    wait_until(lambda: not work_left(redis_cluster, queue), 10, "nothing left in flight")
    producer.close()
    redirects = source.client().info("errorstats")
    assert redirects.get("errorstat_MOVED", {}).get("count", 0) > 0, redirects  # followed


def test_primary_black_holed_mid_drain_replica_promoted_nothing_lost(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """SIGSTOP of the primary serving the queue's slot: its port still accepts connections,
    nothing answers. The consumers' calls end at their socket deadline, the cluster promotes
    the replica, the consumers carry on there; every task done before the node is thawed
    (it then rejoins as a replica)."""
    queue = "{frozen}"
    first = [f"slow:0.01:f{i}" for i in range(200)]
    enqueue(taskd, redis_cluster, queue, *first)
    primary = redis_cluster.node_of(queue)
    deadline = ("--socket-timeout", "1.5", "--connect-timeout", "1")
    for worker in ("one", "two"):
        taskd.consume(
            redis_cluster.url, "--queue", queue, *HANDLER, *deadline, "--worker-id", worker
        )
    wait_until(lambda: len(taskd.done_bodies()) >= 40, 20, "40 tasks done before the freeze")
    primary.freeze()
    try:
        wait_until(lambda: redis_cluster.node_of(queue).port != primary.port, 20, "a new primary")
        second = [f"g{i}" for i in range(50)]
        enqueue(taskd, redis_cluster, queue, *second)
        everything = set(first) | set(second)
        wait_until(lambda: everything <= set(taskd.done_bodies()), 60, "every task done")
        wait_until(lambda: not work_left(redis_cluster, queue), 10, "nothing left in flight")
    finally:
        primary.thaw()
    redis_cluster.wait_ok(20)


def test_primary_killed_mid_drain_replica_promoted_nothing_lost(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """kill -9 of the primary serving the queue's slot: the cluster promotes its replica
    (node timeout 2 s) and the consumers carry on there. Duplicates are allowed (an ack not
    yet replicated is lost with the primary), losses are not. A consumer of a queue on
    another primary rides out the cluster's down state (CLUSTERDOWN) without exiting. Last
    in the module: it leaves the killed node restarted as a replica."""
    queue = "{failover}"
    first = [f"slow:0.01:a{i}" for i in range(300)]
    enqueue(taskd, redis_cluster, queue, *first)
    primary = redis_cluster.node_of(queue)
    bystander = next(
        q
        for q in (f"{{by{i}}}" for i in range(50))
        if redis_cluster.node_of(q).port != primary.port
    )
    for worker in ("one", "two"):
        taskd.consume(redis_cluster.url, "--queue", queue, *HANDLER, "--worker-id", worker)
    other = taskd.consume(redis_cluster.url, "--queue", bystander, *HANDLER, "--worker-id", "by")
    wait_until(lambda: len(taskd.done_bodies()) >= 60, 20, "60 tasks done before the kill")
    primary.kill9()
    wait_until(lambda: redis_cluster.node_of(queue).port != primary.port, 20, "a new primary")
    second = [f"b{i}" for i in range(100)]
    enqueue(taskd, redis_cluster, queue, *second)  # pushed after the failover, to the new one
    enqueue(taskd, redis_cluster, bystander, "by-after")
    everything = set(first) | set(second) | {"by-after"}
    wait_until(lambda: everything <= set(taskd.done_bodies()), 60, "every task done")
    wait_until(lambda: not work_left(redis_cluster, queue), 10, "nothing left in flight")
    assert other.proc.poll() is None, other.lines()[-3:]
    primary.start()  # back as a replica of the promoted node
    redis_cluster.wait_ok(20)


def test_a_password_cluster_wrong_password_is_exit_78_password_hidden(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    cluster = RedisCluster(tmp_path / "auth", primaries=3, replicas=0, password="s3cret")
    try:
        cluster.start()
        done = taskd.run("status", "--redis-url", cluster.url, "--queue", "{q}")
        assert done.returncode == 0, done.stderr
        wrong = cluster.url.replace("s3cret", "wr0ng")
        for verb in (("status",), ("consume", *HANDLER)):
            done = taskd.run(verb[0], "--redis-url", wrong, "--queue", "{q}", *verb[1:])
            assert done.returncode == 78, (verb, done.stderr)
            assert b"wr0ng" not in done.stderr and b"wr0ng" not in done.stdout
    finally:
        cluster.stop()
