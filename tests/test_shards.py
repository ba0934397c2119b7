"""--shards N: one logical queue spread over N shards {Q:0} .. {Q:N-1} (real redis-server, real
taskd): producers spread, a consumer serves every shard in turns, recovery and dead letters
stay per shard, and status sums the shards. The same on a cluster: tests/test_cluster_shards.py.
"""

from __future__ import annotations

import itertools
import json
import signal
import urllib.request
from collections import Counter

import pytest

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon import exitcodes
from daemon.claims import SHARD_TURN, TURN_BATCHES, ShardTurns
from daemon.keys import shard_names
from daemon.producer import ShardCycle
from daemon.status import QueueStatus, summed

HANDLER = ("--handler", "handlers_for_tests:record")
SHARDED = ("--queue", "orders", "--shards", "3")
SHARDS = ("{orders:0}", "{orders:1}", "{orders:2}")


class Named:
    """Stands in for a ReliableQueue in ShardTurns (which only compares identities)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_shard_names_give_each_shard_a_hash_tag_of_its_own() -> None:
    assert shard_names("orders", 1) == ("orders",)  # unsharded: the name unchanged
    assert shard_names("orders", 3) == SHARDS
    assert shard_names("{orders}", 2) == ("{orders:0}", "{orders:1}")
    assert shard_names("app:{orders}:v2", 2) == ("app:{orders:0}:v2", "app:{orders:1}:v2")


def test_shard_turns_keep_to_a_shard_for_a_turn_then_move_on() -> None:
    a, b, c, low = Named("a"), Named("b"), Named("c"), Named("low")
    turns = ShardTurns([[a, b, c], [low]], seed=1)  # type: ignore[list-item]
    assert turns.order() == [b, c, a, low]  # the seed picks the first shard; priority kept
    turns.took(b, SHARD_TURN - 1)  # type: ignore[arg-type]
    assert turns.first() is b
    turns.took(b, 1)  # type: ignore[arg-type]
    assert turns.order() == [c, a, b, low]  # b's turn is over
    turns.found_empty(c)  # type: ignore[arg-type]
    assert turns.first() is a  # an empty shard ends its turn at once
    turns.took(b, 1)  # type: ignore[arg-type]
    assert turns.first() is b  # claims found elsewhere: that shard's turn now


def test_single_pushes_go_onto_every_shard_in_turn() -> None:
    cycle = ShardCycle(["orders", "plain"], 3)
    picked = [cycle.next("orders") for _ in range(9)]
    assert Counter(picked) == {name: 3 for name in SHARDS}
    assert picked[:3] == picked[3:6]
    assert ShardCycle(["plain"], 1).next("plain") == "plain"


def test_status_of_a_sharded_queue_sums_its_shards_and_names_each_worker_once() -> None:
    def row(queue: str, pending: int, age: float | None, alive: bool) -> QueueStatus:
        worker = {"worker": "w1", "alive": alive, "processing": 1, "last_seen": 5.0}
        return QueueStatus(queue, pending, 1, 2, 3, [worker], oldest_age_seconds=age)

    total = summed("orders", [row(SHARDS[0], 4, 1.5, True), row(SHARDS[1], 6, None, False)])
    assert (total.pending, total.processing, total.delayed, total.dead) == (10, 2, 4, 6)
    assert total.oldest_age_seconds == 1.5
    assert total.workers == [{"worker": "w1", "alive": False, "processing": 2, "last_seen": 5.0}]
    assert [s["queue"] for s in total.shards] == list(SHARDS[:2])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--queue", "a{}b", "--shards", "2"), "--queue=a{}b --shards=2"),
        (("--queue", "q", "--shards", "0"), "--shards"),
        (("--queue", "q", "--shards", "129"), "--shards=129"),
    ],
)
def test_a_bad_shard_count_or_name_stops_startup_in_one_line(
    taskd: DaemonFactory, args: tuple[str, ...], named: str
) -> None:
    done = taskd.run("consume", "--redis-url", "redis://127.0.0.1:1/0", *args, *HANDLER)
    assert done.returncode == exitcodes.CONFIG
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines


def test_enqueue_spreads_tasks_evenly_and_a_consumer_drains_every_shard_once(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"task-{i}" for i in range(300)]
    done = taskd.run("enqueue", "--redis-url", redis_server.url, *SHARDED, *bodies)
    assert done.returncode == 0, done.stderr
    assert b"enqueued 300 task(s) on orders (over 3 shards)" in done.stdout
    client = redis_server.client()
    assert [client.llen(s) for s in SHARDS] == [100, 100, 100]
    assert client.exists("orders") == 0  # the logical name itself holds nothing
    taskd.consume(redis_server.url, *SHARDED, *HANDLER, "--prefetch", "10")
    wait_until(lambda: len(taskd.done_bodies()) >= 300, 30, "300 tasks done")
    assert Counter(taskd.done_bodies()) == Counter(bodies)  # each exactly once


@pytest.mark.parametrize("prefetch", ["1", "10"])
def test_a_consumer_serves_its_shards_in_turns_not_one_after_the_other(
    redis_server: RedisServer, taskd: DaemonFactory, prefetch: str
) -> None:
    client = redis_server.client()
    for shard in SHARDS:
        client.lpush(shard, *[f"{shard}-{i}" for i in range(150)])
    taskd.consume(redis_server.url, *SHARDED, *HANDLER, "--prefetch", prefetch)
    wait_until(lambda: len(taskd.done_bodies()) >= 450, 40, "450 tasks done")
    served = [body.split("-")[0] for body in taskd.done_bodies()]
    runs = [len(list(run)) for _, run in itertools.groupby(served)]
    # turns of SHARD_TURN tasks or 4 batches (the batch ending a turn may overrun it)
    longest = max(SHARD_TURN, TURN_BATCHES * int(prefetch)) + int(prefetch) - 1
    assert max(runs) <= longest and len(runs) >= 450 // longest, runs
    for shard in SHARDS:  # FIFO within each shard
        mine = [b for b in taskd.done_bodies() if b.startswith(shard)]
        assert mine == [f"{shard}-{i}" for i in range(150)]


def test_an_idle_consumer_takes_a_push_onto_any_shard_within_the_block_timeout(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(redis_server.url, *SHARDED, *HANDLER, "--block-timeout", "2")
    client = redis_server.client()
    wait_until(lambda: client.exists(*(f"{s}:alive:" for s in SHARDS)) == 0, 1, "start")
    wait_until(lambda: int(client.info("clients")["blocked_clients"]) >= 1, 15, "blocked")
    for n, shard in enumerate(SHARDS, start=1):
        client.lpush(shard, f"late-{shard}")
        # blocked on another shard for block timeout / 3 at a time: at most about 2 s
        wait_until(lambda n=n: len(taskd.done_bodies()) == n, 2.5, f"the push onto {shard}")


def test_a_killed_consumers_task_is_recovered_on_its_shard_by_a_peer(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    timing = ("--heartbeat-ttl", "2", "--recovery-interval", "1")
    client = redis_server.client()
    client.lpush(SHARDS[1], "slow:1:orphan")
    victim = taskd.consume(redis_server.url, *SHARDED, *HANDLER, *timing, "--worker-id", "A")
    wait_until(lambda: taskd.records(), 15, "A to start the task")
    assert client.lrange(f"{SHARDS[1]}:processing:A", 0, -1) == [b"slow:1:orphan"]
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    assert taskd.done_bodies() == []
    taskd.consume(redis_server.url, *SHARDED, *HANDLER, *timing, "--worker-id", "B")
    wait_until(lambda: taskd.done_bodies() == ["slow:1:orphan"], 20, "B to finish the orphan")
    assert client.exists(*(f"{s}:processing:A" for s in SHARDS)) == 0
    assert client.exists(*(f"{s}:alive:A" for s in SHARDS)) == 0
    assert [client.llen(s) for s in SHARDS] == [0, 0, 0]


def test_status_and_dead_letters_of_a_sharded_queue_are_summed_and_per_shard(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    url = ("--redis-url", redis_server.url)
    pushed = taskd.run("enqueue", *url, *SHARDED, "fail:a", "fail:b", "fail:c")
    assert pushed.returncode == 0, pushed.stderr
    taskd.consume(redis_server.url, *SHARDED, *HANDLER, "--max-attempts", "1", "--worker-id", "w")
    client = redis_server.client()
    wait_until(lambda: sum(client.llen(f"{s}:dead") for s in SHARDS) == 3, 20, "3 dead letters")
    assert [client.llen(f"{s}:dead") for s in SHARDS] == [1, 1, 1]  # each on its own shard
    status = taskd.run("status", *url, *SHARDED, "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["queue"], row["pending"], row["dead"]) == ("orders", 0, 3)
    assert [(s["queue"], s["dead"]) for s in row["shards"]] == [(s, 1) for s in SHARDS]
    assert [w["worker"] for w in row["workers"]] == ["w"]
    text = taskd.run("status", *url, *SHARDED).stdout.decode()
    assert "queue orders (sum of 3 shards): pending 0" in text and "shard {orders:2}:" in text
    listed = taskd.run("dead", "list", *url, *SHARDED)
    docs = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert sorted((d["body"], d["shard"]) for d in docs) == sorted(
        (f"fail:{x}", shard) for x, shard in zip("abc", _shards_of(client), strict=True)
    )
    requeued = taskd.run("dead", "requeue", *url, *SHARDED)
    assert b"requeued 3 dead letter(s) onto orders's 3 shards" in requeued.stdout
    wait_until(lambda: sum(client.llen(f"{s}:dead") for s in SHARDS) == 3, 20, "dead again")
    assert [client.llen(f"{s}:dead") for s in SHARDS] == [1, 1, 1]  # back on their own shards
    purged = taskd.run("dead", "purge", *url, *SHARDED)
    assert b"purged 3 dead letter(s)" in purged.stdout
    assert sum(client.llen(f"{s}:dead") for s in SHARDS) == 0


def _shards_of(client: object) -> list[str]:
    """The shard each of fail:a, fail:b, fail:c was dead-lettered on."""
    found = {}
    for shard in SHARDS:
        for entry in client.lrange(f"{shard}:dead", 0, -1):  # type: ignore[attr-defined]
            found[json.loads(entry)["body"]] = shard
    return [found[f"fail:{x}"] for x in "abc"]


@pytest.mark.parametrize(("served", "past"), [((), "{orders:0}"), (("--shards", "2"), SHARDS[2])])
def test_tasks_on_a_shard_past_the_ones_served_are_warned_of_not_left_silently(
    redis_server: RedisServer, taskd: DaemonFactory, served: tuple[str, ...], past: str
) -> None:
    """Producers given --shards 3, consumers fewer (or none): the tasks past them are said."""
    redis_server.client().lpush(past, "stranded")
    url = ("--redis-url", redis_server.url)
    status = taskd.run("status", *url, "--queue", "orders", *served)
    assert f"warning: {past} holds 1 task(s)" in status.stderr.decode()
    port = free_port()
    consumer = taskd.consume(
        redis_server.url, "--queue", "orders", *served, *HANDLER, "--metrics-port", str(port)
    )
    (line,) = consumer.wait_for_event("queue.unserved_shard", 15)
    assert (line["shard"], line["waiting"], line["queue"]) == (past, 1, "orders")
    # exported as a queue with a pending task and no live worker: TaskdNoLiveConsumers
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        page = reply.read().decode()
    assert f'taskd_queue_depth{{queue="{past}",state="pending"}} 1.0' in page
    assert f'taskd_queue_workers_alive{{queue="{past}"}} 0.0' in page
