"""A metrics scrape costs a bounded number of Redis commands and one deadline, whatever the
keyspace holds, and `taskd status` shows the eviction policy (real redis-servers throughout).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon.config import load
from daemon.keys import QueueKeys
from daemon.probes import SCRAPE_DEADLINE, QueueDepthCollector


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


class CommandLog:
    """The commands Redis receives (MONITOR) between two markers, by client address."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.seen: list[dict[str, Any]] = []
        self._monitor = server.client(socket_timeout=10).monitor()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self._monitor as monitor:
            for command in monitor.listen():
                self.seen.append(command)
                if command["command"] == "ECHO taskd-test-stop":
                    return

    def during(self, action: Callable[[], object]) -> list[dict[str, Any]]:
        """Run `action`; the commands sent meanwhile (markers excluded)."""
        self._thread.start()
        wait_until(lambda: self._echo("taskd-test-start"), 5, "MONITOR running")
        action()
        self.client.echo("taskd-test-stop")
        self._thread.join(10)
        marks = [i for i, c in enumerate(self.seen) if c["command"].startswith("ECHO taskd-test")]
        return self.seen[marks[0] + 1 : marks[-1]]

    def _echo(self, text: str) -> bool:
        self.client.echo(text)
        return any(c["command"] == f"ECHO {text}" for c in self.seen)


def _client_address(client: redis.Redis, name_prefix: str) -> str:
    for info in client.client_list():
        if str(info.get("name", "")).startswith(name_prefix):
            return str(info["addr"])
    raise AssertionError(f"no client named {name_prefix}*")


def test_one_scrape_costs_a_few_commands_with_200000_unrelated_keys(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.execute_command("DEBUG", "POPULATE", "200000", "unrelated")
    keys = QueueKeys("jobs")
    client.lpush("jobs", "fail:first", "slow:60:held", "p1", "p2", "p3")
    client.zadd(keys.delayed, {"later": time.time() + 3600})
    port = free_port()
    daemon = taskd.consume(
        redis_server.url,
        "--queue",
        "jobs",
        "--handler",
        "handlers_for_tests:record",
        "--max-attempts",
        "1",
        "--metrics-port",
        str(port),
    )
    wait_until(lambda: client.llen(keys.dead) == 1, 15, "fail:first dead-lettered")
    worker = wait_until(lambda: client.zrange(keys.workers, 0, -1), 10, "a registered worker")
    wait_until(lambda: client.llen(keys.processing(worker[0].decode())) == 1, 10, "held")
    _scrape(port)  # the metrics connection is opened by the first scrape
    address = _client_address(client, "taskd-metrics:")
    scans_before = client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
    texts: list[str] = []
    commands = CommandLog(redis_server).during(lambda: texts.append(_scrape(port)))
    mine = [
        c["command"].split()[0].upper()
        for c in commands
        if f"{c['client_address']}:{c['client_port']}" == address
    ]
    # LLEN ZCARD LLEN ZRANGE LINDEX + EXISTS LLEN per worker + ZSCORE TIME (oldest task age)
    assert 1 <= len(mine) <= 10, mine
    assert "SCAN" not in mine
    assert client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0) == scans_before
    text = texts[0]
    for state, depth in (("pending", 3), ("processing", 1), ("delayed", 1), ("dead", 1)):
        assert _sample(text, "taskd_queue_depth", queue="jobs", state=state) == depth, state
    assert _sample(text, "taskd_queue_workers_alive", queue="jobs") == 1
    assert _sample(text, "taskd_queue_depth_scrape_errors_total") == 0
    daemon.stop()


def test_a_scrape_answers_within_its_deadline_while_redis_is_busy(
    redis_server: RedisServer,
) -> None:
    queues = ("a", "b", "c")
    settings = load({"redis_url": redis_server.url, "queues": ",".join(queues)}, env={})
    collector = QueueDepthCollector(settings)
    registry = CollectorRegistry()
    registry.register(collector)
    redis_server.client().lpush("b", "x", "y")
    first = generate_latest(registry).decode()
    assert _sample(first, "taskd_queue_depth", queue="b", state="pending") == 2
    sleeper = threading.Thread(
        target=lambda: redis_server.client(socket_timeout=10).execute_command("DEBUG", "SLEEP", 5)
    )
    sleeper.start()
    wait_until(lambda: _busy(redis_server), 5, "Redis busy in DEBUG SLEEP")
    started = time.monotonic()
    late = generate_latest(registry).decode()
    took = time.monotonic() - started
    sleeper.join(10)
    assert took < SCRAPE_DEADLINE + 0.5, took
    assert _sample(late, "taskd_queue_depth_scrape_errors_total") == 1
    assert _sample(late, "taskd_queue_depth", queue="b", state="pending") == 2  # the last read
    assert (_sample(late, "taskd_queue_depth_age_seconds") or 0) >= SCRAPE_DEADLINE - 0.1
    fresh = generate_latest(registry).decode()  # Redis answers again
    assert _sample(fresh, "taskd_queue_depth_scrape_errors_total") == 1
    assert (_sample(fresh, "taskd_queue_depth_age_seconds") or 0) < SCRAPE_DEADLINE


def _busy(server: RedisServer) -> bool:
    probe = server.client(socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except redis.TimeoutError:
        return True
    finally:
        probe.close()
    return False


def test_status_shows_the_eviction_policy_and_warns_unless_noeviction(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    for policy, warned in (("allkeys-lru", True), ("noeviction", False)):
        server = RedisServer(tmp_path / policy, None, "--maxmemory-policy", policy)
        server.workdir.mkdir()
        server.start()
        try:
            shown = taskd.run("status", "--redis-url", server.url, "--queue", "jobs", "--json")
            assert shown.returncode == 0, shown.stderr
            (row,) = json.loads(shown.stdout)
            assert row["eviction_policy"] == policy
            if warned:
                assert "allkeys-lru, not noeviction" in row["eviction_warning"]
                assert "tasks are lost" in row["eviction_warning"]
            else:
                assert row["eviction_warning"] == ""
        finally:
            server.stop()


def test_a_subscriber_without_durable_reads_no_queue_at_scrape_time(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush("task:prodcons:queue", "not the subscriber's")
    port = free_port()
    taskd.start(
        "subscribe",
        "--redis-url",
        redis_server.url,
        "--channel",
        "news",
        "--handler",
        "handlers_for_tests:record",
        "--metrics-port",
        str(port),
    )
    wait_until(lambda: _sample(_scrape(port), "taskd_redis_connected") == 1, 15, "subscribed")
    text = _scrape(port)
    assert "taskd_queue_depth{" not in text and "taskd_queue_workers_alive{" not in text
    names = [str(info.get("name", "")) for info in client.client_list()]
    assert not any(name.startswith("taskd-metrics:") for name in names), names
