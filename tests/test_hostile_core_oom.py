"""Redis full (maxmemory reached, noeviction): consumers keep draining (real redis-server)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis

from conftest import DaemonFactory, RedisServer, fill, free_port, wait_until
from daemon.reliable import ReliableQueue

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "jobs"


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def state(server: RedisServer) -> tuple[int, int, int, int]:
    c = server.client()
    held = sum(c.llen(k) for k in c.scan_iter(match=f"{Q}:processing:*"))
    return c.llen(Q), held, c.zcard(f"{Q}:delayed"), c.llen(f"{Q}:dead")


def test_full_redis_is_drained_acked_retried_and_dead_lettered(
    full_redis: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"task-{i}" for i in range(10)]
    client = full_redis.client()
    for body in [*bodies[:5], "fail:poison", *bodies[5:]]:
        client.lpush(Q, body)
    fill(full_redis)
    port = free_port()
    daemon = taskd.consume(
        full_redis.url,
        *("--queue", Q, *HANDLER, "--max-attempts", "3", "--worker-id", "w1"),
        *("--metrics-port", str(port)),
    )
    wait_until(lambda: state(full_redis) == (0, 0, 0, 1), 30, "queue drained, 1 dead letter")
    assert "taskd_redis_out_of_memory 1.0" in _metrics(port)
    assert "taskd_redis_connected 1.0" in _metrics(port)
    assert sorted(taskd.done_bodies()) == sorted(bodies)
    dead = json.loads(client.lindex(f"{Q}:dead", 0))
    assert (dead["body"], dead["attempts"]) == ("fail:poison", 3)
    assert len(daemon.events("task.failed")) == 2  # two retries while Redis stayed full
    assert len(daemon.events("redis.out_of_memory")) == 1
    assert daemon.events("redis.disconnected") == []  # full is not down
    assert client.exists(f"{Q}:alive:w1") == 1  # the heartbeat works under OOM too
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")  # still full: what was drained was the tasks only
    # memory freed: one line says so, and the blocking claim serves new tasks again
    client.delete("filler")
    client.lpush(Q, "after")
    wait_until(lambda: "after" in taskd.done_bodies(), 10, "a task after memory was freed")
    daemon.wait_for_event("redis.memory_ok", 5)
    assert "taskd_redis_out_of_memory 0.0" in _metrics(port)
    assert len(daemon.events("redis.out_of_memory")) == 1


def test_scripts_without_allow_oom_flag_still_settle_on_a_full_redis(
    full_redis: RedisServer,
) -> None:
    """The plain scripts (for Redis 6.2) remove before they add: legacy rules let them run."""
    client = full_redis.client()
    client.lpush(Q, "a", "b", "c")
    q = ReliableQueue(client, Q, "w0")
    q.use_allow_oom(False)
    assert q.take(5) is None  # taking the id adds bytes first: before Redis is full
    fill(full_redis)
    q.heartbeat(5)  # renewal expires before it adds: allowed
    assert q.claim_when_full() == b"a"
    assert q.ack(b"a") == (True, 0)
    assert q.claim_when_full() == b"b"
    assert q.fail(b"b", b'{"error": "x"}', 1, 0.1, 0.1)[0] == "dead"
    (acked, _), following = q.ack_and_claim_next(b"zzz", scripted_claim=True)
    assert following == b"c" and not acked
    assert q.recover_own(5).returned == 1
