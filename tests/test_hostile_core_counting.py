"""Counting what happened, a heartbeat thread that cannot die silently, truthful work clock,
and handler errors that cannot crash the loop (real redis-server, real taskd where it can)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import structlog

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon import config, metrics
from daemon.consumer import Consumer
from daemon.liveness import Progress
from daemon.reliable import ReliableQueue

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "jobs"


def _sample(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{queue="{Q}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_ack_that_found_the_task_recovered_counts_as_done_but_recovered_not_acked(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush(Q, "slow:1.5:taken")
    port = free_port()
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1", "--metrics-port", str(port)
    )
    wait_until(lambda: taskd.records(), 10, "the handler to start")
    assert client.lrem(f"{Q}:processing:w1", 1, "slow:1.5:taken") == 1  # a peer recovered it
    daemon.wait_for_event("task.done_but_recovered", 10)
    assert _sample(port, "taskd_tasks_done_but_recovered_total") == 1
    assert _sample(port, "taskd_tasks_acked_total") == 0
    client.lpush(Q, "plain")
    wait_until(lambda: "plain" in taskd.done_bodies(), 10, "the next task")
    wait_until(lambda: _sample(port, "taskd_tasks_acked_total") == 1, 5, "one real ack")


def test_dead_letter_of_a_task_no_longer_held_reports_no_move(redis_server: RedisServer) -> None:
    q = ReliableQueue(redis_server.client(), Q, "w0")
    assert q.dead_letter(b"gone", b"{}") is False
    assert redis_server.client().llen(f"{Q}:dead") == 0


def test_handler_error_with_a_lone_surrogate_is_dead_lettered_and_the_loop_goes_on(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush(Q, "bad", "ok")
    daemon = taskd.consume(
        redis_server.url,
        *("--queue", Q, "--handler", "handlers_for_tests:raise_surrogate"),
        *("--max-attempts", "1"),
    )
    wait_until(lambda: client.llen(f"{Q}:dead") == 1, 10, "the dead letter")
    wait_until(lambda: taskd.done_bodies() == ["ok"], 10, "the next task handled")
    assert daemon.proc.poll() is None
    doc = json.loads(client.lindex(f"{Q}:dead", 0))
    assert doc["body"] == "bad" and "\\udcff" in doc["error"]
    assert "FileNotFoundError" in daemon.events("task.dead_lettered")[0]["error"]


def _settings(server: RedisServer, **extra: str) -> config.Settings:
    values = {"redis_url": server.url, "queues": [Q], "block_timeout": "0.2", "worker_id": "w0"}
    values.update({"backoff_cap": "0.05", "backoff_base": "0.01", **extra})
    return config.load(values, env={})


def test_heartbeat_keeper_thread_death_is_logged_counted_and_fails_health(
    redis_server: RedisServer,
) -> None:
    progress = Progress()
    with structlog.testing.capture_logs() as logs:
        consumer = Consumer(_settings(redis_server), lambda body: None, progress=progress)
        beat = consumer._heartbeat_keeper
        beat.ttl = 0.3
        beat.queues = [None]  # type: ignore[list-item]  # any error but a RedisError
        before = _deaths(beat.name)
        beat.busy = True
        beat.start()
        beat.join(5)
    assert not beat.is_alive()
    assert "AttributeError" in progress.dead_helpers[beat.name]
    died = [e for e in logs if e["event"] == "thread.died"]
    assert died and "Traceback" in died[0]["traceback"]
    assert _deaths(beat.name) == before + 1


def _deaths(thread: str) -> float:
    value = metrics.registry().get_sample_value(
        "taskd_helper_thread_deaths_total", {"thread": thread}
    )
    return value or 0.0


def test_empty_claims_are_work_done_but_redis_retries_are_not(redis_server: RedisServer) -> None:
    progress = Progress()
    consumer = Consumer(_settings(redis_server), lambda body: None, progress=progress)
    runner = threading.Thread(target=consumer.run, daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        # idle: blocking claims (0.2 s) on an empty queue return nothing, and that is no stall
        wait_until(
            lambda: time.monotonic() - started > 1.0 and progress.since_work() < 0.6,
            5,
            "an idle consumer doing its (no) work",
        )
        redis_server.stop()
        # the loop retries with backoff: it turns (progress), but does no work
        wait_until(lambda: progress.since_work() > 1.5, 5, "the work clock to stand still")
        assert progress.snapshot().since_progress < 0.5
        redis_server.start()
        wait_until(lambda: progress.since_work() < 0.6, 10, "work clock after Redis is back")
    finally:
        consumer.stop_requested.set()
        runner.join(10)
