"""The age of the oldest pending task (issue 15): producers stamp, consumers clear, status reads.

Real redis-server, the real CLI (`taskd enqueue`, `taskd status --json`, `taskd consume` with
its /metrics), no mocks: the age is read from Redis's own clock.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from test_security import _acl_server

from conftest import Daemon, DaemonFactory, RedisServer, free_port, wait_until
from daemon import producer
from daemon.reliable import digest

HANDLER = ("--handler", "handlers_for_tests:record")
QUEUE = "task:age"
STAMPS = f"{QUEUE}:stamps"
SERIES = re.compile(r'^taskd_queue_oldest_task_age_seconds\{queue="task:age"\} (\S+)$', re.M)


def _status(taskd: DaemonFactory, url: str) -> dict[str, Any]:
    done = taskd.run("status", "--redis-url", url, "--queue", QUEUE, "--json")
    assert done.returncode == 0, done.stderr
    row: dict[str, Any] = json.loads(done.stdout)[0]
    return row


def _series(port: int) -> float | None:
    """The exported age, or None when the consumer's /metrics has no such series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        found = SERIES.search(reply.read().decode())
    return float(found.group(1)) if found else None


def _enqueue(taskd: DaemonFactory, url: str, *bodies: str) -> None:
    done = taskd.run("enqueue", "--redis-url", url, "--queue", QUEUE, *bodies)
    assert done.returncode == 0, done.stderr


def _drain_and_check(
    taskd: DaemonFactory, producer_url: str, consumer_url: str, reader: Any
) -> Daemon:
    """The whole path: stamped on enqueue, aged in status and /metrics, cleared by the acks."""
    started = time.monotonic()
    _enqueue(taskd, producer_url, "slow:3:first", "second")
    assert reader.zcard(STAMPS) == 2
    wait_until(lambda: time.monotonic() - started >= 2.2, 5, "two seconds to pass")
    row = _status(taskd, consumer_url)
    assert row["pending"] == 2
    assert 2.0 <= row["oldest_age_seconds"] <= time.monotonic() - started + 1
    text = taskd.run("status", "--redis-url", consumer_url, "--queue", QUEUE)
    assert "oldest pending task: " in text.stdout.decode(), text.stdout
    port = free_port()
    consumer = taskd.consume(consumer_url, "--queue", QUEUE, *HANDLER, "--metrics-port", str(port))
    # The consumer holds "slow:3:first"; "second" waits at the head, stamped at the same time.
    wait_until(lambda: any(b == "slow:3:first" for _, _, b in taskd.records()), 15, "a start")
    exported = wait_until(lambda: _series(port), 10, "the age series")
    assert exported >= 2.0
    wait_until(lambda: {"slow:3:first", "second"} <= set(taskd.done_bodies()), 20, "drained")
    wait_until(lambda: reader.zcard(STAMPS) == 0, 5, "the acks to drop the stamps")
    wait_until(lambda: _series(port) is None, 10, "the series to go once the queue is empty")
    assert _status(taskd, consumer_url)["oldest_age_seconds"] is None
    assert "NOPERM" not in consumer.log_path.read_text()
    return consumer


def test_enqueue_stamps_status_and_metrics_show_the_age_and_acks_clear_it(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    _drain_and_check(taskd, redis_server.url, redis_server.url, client)
    assert client.lrange(QUEUE, 0, -1) == []  # the bodies handlers got were the plain ones


def test_the_body_handlers_receive_is_unchanged(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client: Any = redis_server.client()
    producer.enqueue_many(client, QUEUE, ["a", b"\xff\x00b"])
    assert client.lrange(QUEUE, 0, -1) == [b"\xff\x00b", b"a"]  # LPUSH order, raw bodies
    stamps = dict(client.zrange(STAMPS, 0, -1, withscores=True))
    assert set(stamps) == {digest(b"a").encode(), digest(b"\xff\x00b").encode()}
    seconds, micros = client.time()
    assert all(0 <= seconds + micros / 1e6 - s < 5 for s in stamps.values())


def test_a_plain_lpush_head_has_no_age_rather_than_a_wrong_one(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush(QUEUE, "slow:3:by hand")  # the head: consumed first, never stamped
    _enqueue(taskd, redis_server.url, "stamped")
    assert client.zcard(STAMPS) == 1
    assert _status(taskd, redis_server.url)["oldest_age_seconds"] is None
    port = free_port()
    taskd.consume(redis_server.url, "--queue", QUEUE, *HANDLER, "--metrics-port", str(port))
    wait_until(lambda: any(b == "slow:3:by hand" for _, _, b in taskd.records()), 15, "a start")
    # Once the stamped task is the head, its age is exported: a real one, under a minute.
    exported = wait_until(lambda: _series(port), 10, "the age series")
    assert 0 < exported < 60
    wait_until(lambda: "stamped" in taskd.done_bodies(), 20, "drained")
    wait_until(lambda: _series(port) is None, 10, "the series to go")
    assert client.zcard(STAMPS) == 0


def test_a_dead_lettered_task_leaves_no_stamp_and_a_requeue_stamps_it_again(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    _enqueue(taskd, redis_server.url, "fail:poison")
    consumer = taskd.consume(
        redis_server.url, "--queue", QUEUE, *HANDLER,
        "--max-attempts", "2", "--retry-base", "2", "--retry-cap", "2",
    )  # fmt: skip
    wait_until(lambda: client.zcard(f"{QUEUE}:delayed") == 1, 15, "the first failure")
    assert client.zscore(STAMPS, digest(b"fail:poison")) is not None  # a retry keeps it
    wait_until(lambda: client.llen(f"{QUEUE}:dead") == 1, 15, "the poison dead-lettered")
    assert client.zcard(STAMPS) == 0
    consumer.stop()
    done = taskd.run("dead", "requeue", "--redis-url", redis_server.url, "--queue", QUEUE)
    assert done.returncode == 0, done.stderr
    assert client.zscore(STAMPS, digest(b"fail:poison")) is not None
    assert _status(taskd, redis_server.url)["oldest_age_seconds"] is not None


def test_a_delayed_task_ages_from_its_due_time_and_old_stamps_are_trimmed(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client: Any = redis_server.client()
    client.zadd(STAMPS, {"leaked": 1.0})  # a task removed by hand a long time ago
    scheduled = producer.enqueue_delayed(client, QUEUE, "later", 3600)
    assert abs(client.zscore(STAMPS, digest(b"later")) - scheduled.due_at) < 0.001
    assert client.zscore(STAMPS, "leaked") is None
    client.zadd(STAMPS, {"leaked": 1.0})
    producer.enqueue_many(client, QUEUE, [f"now {i}" for i in range(producer.TRIM_EVERY)])
    assert client.zscore(STAMPS, "leaked") is None  # a batch of TRIM_EVERY always trims
    assert client.zcard(STAMPS) == 1 + producer.TRIM_EVERY


def test_the_acl_users_can_stamp_read_and_clear(tmp_path: Path, taskd: DaemonFactory) -> None:
    server = _acl_server(tmp_path)
    try:
        base = f"127.0.0.1:{server.port}/0"
        reader = server.client()
        consumer = _drain_and_check(
            taskd,
            f"redis://taskd-producer:pw-producer@{base}",
            f"redis://taskd-consumer:pw-consumer@{base}",
            reader,
        )
        consumer.stop()
        web = f"redis://taskd-web:pw-web@{base}"
        _enqueue(taskd, web, "from the web user")  # the web pushes with the same script
        assert _status(taskd, web)["oldest_age_seconds"] is not None
    finally:
        server.stop()


def test_a_full_redis_refuses_a_stamped_push_even_when_it_trims(
    redis_server: RedisServer,
) -> None:
    """The trim is a removal: run first, it would let a plain script push under OOM."""
    client: Any = redis_server.client()
    client.zadd(STAMPS, {"leaked": 1.0})
    client.config_set("maxmemory", "1")
    try:
        with pytest.raises(producer.PushStopped) as stopped:
            producer.enqueue_many(client, QUEUE, ["x"] * producer.TRIM_EVERY)  # always trims
        assert isinstance(stopped.value.cause, redis.exceptions.OutOfMemoryError)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            producer.enqueue_delayed(client, QUEUE, "later", 60)
    finally:
        client.config_set("maxmemory", "0")
    assert client.llen(QUEUE) == 0 and client.zcard(f"{QUEUE}:delayed") == 0
    assert client.zrange(STAMPS, 0, -1) == [b"leaked"]


def test_an_acl_user_from_before_stamps_still_pushes_and_reads_depths(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """No +zremrangebyscore, +lindex, +zscore: the push is not an error, the age is unknown."""
    admin: Any = redis_server.client()
    old = "~task:* -@all +ping +select +client|setname +lpush +evalsha +script|load +time +zadd"
    admin.execute_command("ACL", "SETUSER", "old", "on", ">pw", *old.split(), "+llen", "+zcard")
    admin.execute_command("ACL", "SETUSER", "old", "+zrange", "+exists")
    admin.zadd(STAMPS, {"leaked": 1.0})
    url = f"redis://old:pw@127.0.0.1:{redis_server.port}/0"
    bodies = [f"b{i}" for i in range(producer.TRIM_EVERY)]  # a batch that always trims
    _enqueue(taskd, url, *bodies)
    assert admin.llen(QUEUE) == producer.TRIM_EVERY
    assert admin.zscore(STAMPS, "leaked") == 1.0  # the trim was refused, the push was not
    row = _status(taskd, url)
    assert row["pending"] == producer.TRIM_EVERY and row["oldest_age_seconds"] is None
