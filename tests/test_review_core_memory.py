"""Redis full, as the shipped ACL user without INFO sees it, and Redis full then down.

Real redis-server (maxmemory reached, noeviction) and real taskd processes.
"""

from __future__ import annotations

import urllib.request

from conftest import ROOT, DaemonFactory, RedisServer, fill, free_port, wait_until

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "task:q"  # the shipped ACL's key pattern is ~task:*


def _consumer_user_without(server: RedisServer, command: str) -> str:
    """The shipped taskd-consumer ACL user minus `command`; returns its URL."""
    line = next(
        x
        for x in (ROOT / "conf" / "redis-acl.conf").read_text().splitlines()
        if x.startswith("user taskd-consumer ")
    )
    rules = line.split()[2:]
    rules = [">pw" if r.startswith(">") else r for r in rules if r != f"+{command}"]
    server.client().execute_command("ACL", "SETUSER", "taskd-consumer", "reset", *rules)
    return f"redis://taskd-consumer:pw@127.0.0.1:{server.port}/0"


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_full_redis_is_drained_by_an_acl_user_without_info_and_the_policy_is_said_unknown(
    full_redis: RedisServer, taskd: DaemonFactory
) -> None:
    client = full_redis.client()
    bodies = [f"t{i}" for i in range(10)]
    client.lpush(Q, *bodies)
    url = _consumer_user_without(full_redis, "info")
    fill(full_redis)
    daemon = taskd.consume(url, "--queue", Q, *HANDLER, "--worker-id", "w1")
    wait_until(lambda: client.llen(Q) == 0, 20, "the queue drained while Redis is full")
    wait_until(lambda: sorted(taskd.done_bodies()) == sorted(bodies), 10, "every task done")
    assert client.exists(f"{Q}:alive:w1") == 1  # the id was taken under OOM
    assert len(daemon.events("redis.out_of_memory")) == 1
    unknown = daemon.events("redis.eviction_policy_unknown")
    assert len(unknown) == 1 and "noeviction" in unknown[0]["note"]
    assert "NOPERM" not in daemon.log_path.read_text()


def _gauge(port: int, name: str) -> str:
    return next(x for x in _metrics(port).splitlines() if x.startswith(name + " "))


def test_full_then_unreachable_redis_is_not_reported_full_until_it_answers_full_again(
    full_redis: RedisServer, taskd: DaemonFactory
) -> None:
    fill(full_redis)
    port = free_port()
    daemon = taskd.consume(
        full_redis.url, "--queue", Q, *HANDLER, "--worker-id", "w1", "--metrics-port", str(port)
    )
    daemon.wait_for_event("redis.out_of_memory", 10)
    assert _gauge(port, "taskd_redis_out_of_memory") == "taskd_redis_out_of_memory 1.0"
    full_redis.kill9()
    daemon.wait_for_event("redis.disconnected", 10)
    wait_until(
        lambda: _gauge(port, "taskd_redis_out_of_memory") == "taskd_redis_out_of_memory 0.0",
        5,
        "the OOM gauge to drop while Redis is unreachable (its memory is unknown)",
    )
    assert daemon.events("redis.memory_ok") == []  # nothing says it accepts writes
    full_redis.start()  # empty again (no persistence): fill it once more
    daemon.wait_for_event("redis.reconnected", 15)
    fill(full_redis)
    daemon.wait_for_event("redis.out_of_memory", 10, count=2)  # said again after the outage
    assert _gauge(port, "taskd_redis_out_of_memory") == "taskd_redis_out_of_memory 1.0"
