"""Redis unreachable is never an exit for consume/subscribe, however long it lasts.

A real `taskd consume` and a real `taskd subscribe` are started against a closed loopback port
with a tiny backoff, so thousands of reconnect attempts (what days of outage at the default
backoff would add up to) happen in seconds; then a real redis-server comes up on that port and
both must work again. Before the failure count was capped, the exponential backoff overflowed
(OverflowError) after about 1,024 attempts and both processes crashed.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import structlog
from redis.backoff import FullJitterBackoff

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon.faults import BACKOFF_STEPS, LinkState

HANDLER = ("--handler", "handlers_for_tests:record")
ATTEMPTS = 3000  # well past the 1,024 at which 2**failures no longer fits a float
TINY = {
    "TASKD_BACKOFF_BASE": "0.0001",
    "TASKD_BACKOFF_CAP": "0.001",
    "TASKD_CONNECT_TIMEOUT": "0.5",
    "TASKD_STALL_TIMEOUT": "60",
}


def redis_errors(port: int) -> float:
    """Sum of taskd_redis_errors_total over its kinds, from the process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        page = answer.read().decode()
    found = re.findall(r"^taskd_redis_errors_total\{[^}]*\} (\S+)$", page, re.MULTILINE)
    return sum(float(value) for value in found)


def test_link_state_survives_a_failure_count_of_days() -> None:
    """The count the logs report keeps growing; the backoff is fed a capped number."""
    link = LinkState(FullJitterBackoff(cap=5.0, base=0.2), structlog.get_logger("test"))
    delays = [link.failed(ConnectionError("refused")) for _ in range(100_000)]
    assert link.failures == 100_000
    assert max(delays) <= 5.0 and BACKOFF_STEPS < 1024


def test_thousands_of_failed_reconnects_then_redis_comes_back(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = RedisServer(tmp_path / "late")
    server.workdir.mkdir()
    url = server.url  # nothing listens on this port yet: every connect is refused at once
    consume_metrics, subscribe_metrics = free_port(), free_port()
    consumer = taskd.start(
        "consume",
        "--redis-url",
        url,
        "--queue",
        "jobs",
        "--block-timeout",
        "0.5",
        "--metrics-port",
        str(consume_metrics),
        *HANDLER,
        env=taskd.env(**TINY),
    )
    subscriber = taskd.start(
        "subscribe",
        "--redis-url",
        url,
        "--channel",
        "news",
        "--ping-interval",
        "0.5",
        "--block-timeout",
        "0.5",
        "--metrics-port",
        str(subscribe_metrics),
        *HANDLER,
        env=taskd.env(**TINY),
    )
    for port in (consume_metrics, subscribe_metrics):
        wait_until(lambda p=port: redis_errors(p) >= ATTEMPTS, 20, f"{ATTEMPTS} failed attempts")
    assert consumer.proc.poll() is None, consumer.lines()[-5:]
    assert subscriber.proc.poll() is None, subscriber.lines()[-5:]
    assert len(consumer.events("redis.disconnected")) == 1  # one line for the whole outage
    assert len(subscriber.events("redis.disconnected")) == 1
    server.start()
    try:
        client = server.client()
        client.lpush("jobs", "after-the-outage")
        wait_until(lambda: "after-the-outage" in taskd.done_bodies(), 10, "the task consumed")
        reconnected = consumer.wait_for_event("redis.reconnected", 5)[0]
        assert reconnected["attempts"] >= ATTEMPTS  # the true count, for the operator
        subscriber.wait_for_event("pubsub.subscribed", 5)

        def published_and_handled() -> bool:
            client.publish("news", "news-after")
            return "news-after" in taskd.done_bodies()

        wait_until(published_and_handled, 10, "a message handled after the outage")
        assert subscriber.wait_for_event("redis.reconnected", 5)[0]["attempts"] >= ATTEMPTS
        assert consumer.proc.poll() is None and subscriber.proc.poll() is None
    finally:
        server.stop()
