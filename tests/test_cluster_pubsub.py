"""Pub/sub on a real Redis Cluster (3 primaries, 3 replicas): `--pubsub auto` and `sharded`.

auto on a cluster whose nodes have SPUBLISH: `taskd publish` sends SPUBLISH (its reply counts
the shard's subscribers, so "no subscriber was listening" is right), `taskd subscribe` listens
with SSUBSCRIBE on the node of each channel's slot and with classic SUBSCRIBE, so a third
party's PUBLISH through any node is heard too. A slot that moves (a reshard) or a primary
killed (a failover) ends the sharded subscription; the subscriber subscribes again from a
fresh slot map and hears what is published after the move. The single-node side is
tests/test_pubsub_kind.py; classic pub/sub on a cluster is in tests/test_cluster.py.
"""

from __future__ import annotations

import subprocess

from cluster_fixtures import redis_cluster

from conftest import Daemon, DaemonFactory, wait_until
from tools.harness.cluster import RedisCluster
from tools.harness.redis_server import RedisServer

__all__ = ["redis_cluster"]
HANDLER = ("--handler", "handlers_for_tests:record")
FAST = ("--ping-interval", "0.5", "--backoff-base", "0.05", "--backoff-cap", "0.5")
SLOT_0 = "{r6961}"  # a channel in hash slot 0: the first slot a reshard takes from its node


def primaries(cluster: RedisCluster) -> list[RedisServer]:
    return [n for n in cluster.live() if n.client().execute_command("ROLE")[0] == b"master"]


def channel_elsewhere(cluster: RedisCluster, *taken: str) -> str:
    """A channel name whose slot is served by a node serving none of `taken`."""
    used = {cluster.node_of(c).port for c in taken}
    return next(c for c in (f"feed{i}" for i in range(100)) if cluster.node_of(c).port not in used)


def subscribe(taskd: DaemonFactory, cluster: RedisCluster, *channels: str, **kw: str) -> Daemon:
    names = [a for c in channels for a in ("--channel", c)]
    args = ["subscribe", "--redis-url", cluster.url, *names, *HANDLER, *FAST]
    return taskd.start(*args, *(a for k, v in kw.items() for a in (f"--{k}", v)))


def taskd_publish(taskd: DaemonFactory, url: str, channel: str, body: str) -> str:
    """`taskd publish` (auto); asserts it used SPUBLISH and that a subscriber was counted."""
    done = taskd.run("publish", "--redis-url", url, "--channel", channel, body)
    assert done.returncode == 0, done.stderr
    assert b"no subscriber was listening" not in done.stderr, done.stderr
    assert done.stdout.decode() == f"published 1 message(s) on {channel} (SPUBLISH)\n"
    return body


def test_auto_publish_counts_the_subscriber_through_another_node_and_classic_is_heard(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    other = channel_elsewhere(redis_cluster, "news")
    sub = subscribe(taskd, redis_cluster, "news", other)
    line = sub.wait_for_event("pubsub.subscribed", 15)[0]
    assert line["kind"] == "sharded+classic", line
    homes = {f"127.0.0.1:{redis_cluster.node_of(c).port}" for c in ("news", other)}
    assert set(line["nodes"]) == homes and len(homes) == 2  # one connection per node
    # the publisher names only the last nodes (replicas at the start): not the subscriber's
    far = f"redis+cluster://{','.join(redis_cluster.addresses[3:])}/"
    sent = [taskd_publish(taskd, far, c, f"auto-{c}") for c in ("news", other)]
    wait_until(lambda: set(sent) <= set(taskd.done_bodies()), 10, "both sharded messages")
    # a third party's classic PUBLISH on a node serving neither channel: that node counts 0
    # subscribers (the old caveat), the classic subscription hears it through the bus
    third = next(n for n in primaries(redis_cluster) if f"127.0.0.1:{n.port}" not in homes)
    cli = ["redis-cli", "-p", str(third.port), "PUBLISH", "news", "third-party"]
    assert subprocess.run(cli, capture_output=True, timeout=10, check=True).stdout == b"0\n"
    wait_until(lambda: "third-party" in taskd.done_bodies(), 10, "the classic PUBLISH heard")
    assert sorted(taskd.done_bodies()) == sorted([*sent, "third-party"])  # each once


def test_sharded_with_a_pattern_is_refused_on_a_cluster(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    args = ("--redis-url", redis_cluster.url, "--pattern", "news.*", "--pubsub", "sharded")
    done = taskd.run("subscribe", *args, *HANDLER)
    assert done.returncode == 78, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "there are no sharded patterns" in lines[0], lines


def test_channel_slot_resharded_the_subscriber_follows_it(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """`redis-cli --cluster reshard` moves slot 0 (the channel's) to another primary: the
    old node sends sunsubscribe; the subscriber re-reads the slot map, subscribes on the
    new node, and hears (and is counted for) what is published after the move."""
    other = channel_elsewhere(redis_cluster, SLOT_0)
    source = redis_cluster.node_of(SLOT_0)
    target = next(n for n in primaries(redis_cluster) if n.port != source.port)
    sub = subscribe(taskd, redis_cluster, SLOT_0, other)
    sub.wait_for_event("pubsub.subscribed", 15)
    reshard = RedisCluster.reshard_argv(source, target)
    done = subprocess.run(reshard, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout[-500:]
    wait_until(lambda: redis_cluster.node_of(SLOT_0).port == target.port, 10, "slot 0 moved")
    assert sub.wait_for_event("pubsub.slot_moved", 10)[0]["channel"] == SLOT_0
    back = sub.wait_for_event("pubsub.resubscribed", 15)[0]
    assert f"127.0.0.1:{target.port}" in back["nodes"], back
    sent = [taskd_publish(taskd, redis_cluster.url, c, f"moved-{c}") for c in (SLOT_0, other)]
    wait_until(lambda: set(sent) <= set(taskd.done_bodies()), 10, "both heard after the move")
    assert sub.proc.poll() is None


def test_primary_of_the_channel_killed_the_subscriber_follows_the_failover(
    redis_cluster: RedisCluster, taskd: DaemonFactory
) -> None:
    """kill -9 of the primary serving a sharded channel: the subscriber's connection to the
    node of its other channel stays subscribed meanwhile (counted by SPUBLISH there), the
    replica is promoted, the subscriber subscribes on it and hears what is published after.
    Last in the module: it leaves the killed node restarted as a replica."""
    channel = "alerts"
    other = channel_elsewhere(redis_cluster, channel)
    primary, bystander = redis_cluster.node_of(channel), redis_cluster.node_of(other)
    sub = subscribe(taskd, redis_cluster, channel, other, pubsub="sharded")
    assert sub.wait_for_event("pubsub.subscribed", 15)[0]["kind"] == "sharded"
    primary.kill9()
    sub.wait_for_event("redis.disconnected", 5)
    # well within the node timeout (2 s): the other shard is up and our link to it is alive
    assert bystander.client().execute_command("SPUBLISH", other, "during-outage") == 1
    wait_until(lambda: "during-outage" in taskd.done_bodies(), 5, "heard during the outage")
    wait_until(lambda: redis_cluster.node_of(channel).port != primary.port, 20, "a new primary")
    back = sub.wait_for_event("pubsub.resubscribed", 20)[0]
    assert len(back["nodes"]) == 2 and f"127.0.0.1:{primary.port}" not in back["nodes"], back
    body = taskd_publish(taskd, redis_cluster.url, channel, "after-failover")
    wait_until(lambda: body in taskd.done_bodies(), 10, "heard after the failover")
    assert sub.proc.poll() is None
    primary.start()  # back as a replica of the promoted node
    redis_cluster.wait_ok(20)
