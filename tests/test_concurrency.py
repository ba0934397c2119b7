"""--concurrency N: N handler threads (or N coroutines on one event loop for an async def),
each task acked on its own completion, and every in-flight task covered by the task timeout,
the drain and recovery (real redis-server, real taskd)."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import pytest

from conftest import DaemonFactory, RedisServer, free_port, wait_until

THREADED = ("--handler", "handlers_for_concurrency:threaded_record")
ASYNC = ("--handler", "handlers_for_concurrency:async_record")
Q = "jobs"


def push(server: RedisServer, *bodies: str) -> None:
    """LPUSH in order: the first body given is the first consumed."""
    server.client().lpush(Q, *bodies)


def held(server: RedisServer, worker: str) -> list[bytes]:
    return list(server.client().lrange(f"{Q}:processing:{worker}", 0, -1))


def started(taskd: DaemonFactory) -> list[str]:
    return [body for _, phase, body in taskd.records() if phase == "start"]


def alive(server: RedisServer, worker: str) -> bool:
    return bool(server.client().exists(f"{Q}:alive:{worker}"))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def in_progress(port: int) -> float:
    _, text = get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(f'taskd_tasks_in_progress{{queue="{Q}"}}'):
            return float(line.split()[-1])
    return -1.0


def test_ten_threads_finish_fifty_200ms_tasks_in_a_fraction_of_the_serial_time(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(
        redis_server.url, "--queue", Q, *THREADED, "--concurrency", "10", "--worker-id", "w"
    )
    wait_until(lambda: alive(redis_server, "w"), 15, "the consumer up")
    bodies = [f"slow:0.2:t{i}" for i in range(50)]
    began = time.monotonic()
    push(redis_server, *bodies)
    wait_until(lambda: len(taskd.done_bodies()) == 50, 20, "50 tasks done")
    elapsed = time.monotonic() - began
    assert elapsed < 50 * 0.2 / 3, elapsed  # one at a time: 10 s; ten at once: about 1 s
    assert sorted(taskd.done_bodies()) == sorted(bodies)
    threads = {body for _, phase, body in taskd.records() if phase == "thread"}
    assert len(threads) == 10, threads
    wait_until(lambda: not held(redis_server, "w"), 5, "every task acked")


def test_async_handler_runs_a_hundred_coroutines_on_one_event_loop(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(
        redis_server.url, "--queue", Q, *ASYNC, "--concurrency", "100", "--worker-id", "w"
    )
    wait_until(lambda: alive(redis_server, "w"), 15, "the consumer up")
    bodies = [f"slow:1:a{i}" for i in range(100)]
    began = time.monotonic()
    push(redis_server, *bodies)
    wait_until(lambda: len(taskd.done_bodies()) == 100, 30, "100 tasks done")
    elapsed = time.monotonic() - began
    assert elapsed < 10, elapsed  # one at a time: 100 s
    loops = {body for _, phase, body in taskd.records() if phase == "loop"}
    assert len(loops) == 1, loops  # one thread, one event loop
    wait_until(lambda: not held(redis_server, "w"), 5, "every task acked")


def test_every_task_in_flight_is_counted_and_health_stays_true(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    port = free_port()
    metrics = ("--metrics-port", str(port))
    taskd.consume(redis_server.url, "--queue", Q, *THREADED, "--concurrency", "5", *metrics)
    push(redis_server, *[f"slow:4:m{i}" for i in range(5)])
    wait_until(lambda: len(started(taskd)) == 5, 15, "five tasks running")
    wait_until(lambda: in_progress(port) == 5, 5, "taskd_tasks_in_progress at 5")
    status, body = get(port, "/healthz")
    assert status == 200, body
    wait_until(lambda: len(taskd.done_bodies()) == 5, 15, "five tasks done")
    wait_until(lambda: in_progress(port) == 0, 5, "taskd_tasks_in_progress back at 0")


def test_kill9_with_tasks_in_flight_recovers_each_with_one_attempt(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"slow:3:k{i}" for i in range(6)]
    push(redis_server, *bodies)
    worker = ("--queue", Q, *THREADED, "--concurrency", "6", "--worker-id", "w1")
    first = taskd.consume(redis_server.url, *worker)
    wait_until(lambda: len(started(taskd)) == 6, 15, "six tasks running")
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert sorted(held(redis_server, "w1")) == sorted(b.encode() for b in bodies)
    second = taskd.consume(redis_server.url, *worker)
    assert second.wait_for_event("recovery.own_tasks", 15)[0]["returned"] == 6
    done = second.wait_for_event("task.done", 20, count=6)  # acked by the second process
    assert sorted(e["attempt"] for e in done) == [2] * 6  # one failed attempt each
    wait_until(lambda: not held(redis_server, "w1"), 5, "every task acked")


@pytest.mark.parametrize("handler", [THREADED, ASYNC], ids=["threads", "coroutines"])
def test_sigterm_drains_every_task_in_flight(
    redis_server: RedisServer, taskd: DaemonFactory, handler: tuple[str, str]
) -> None:
    bodies = [f"slow:1:d{i}" for i in range(4)]
    push(redis_server, *bodies)
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *handler, "--concurrency", "4", "--worker-id", "w1"
    )
    wait_until(lambda: len(started(taskd)) == 4, 15, "four tasks running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert sorted(taskd.done_bodies()) == sorted(bodies)
    assert held(redis_server, "w1") == []
    assert len(daemon.events("task.done")) == 4


def test_one_hung_thread_among_several_exits_70_and_its_task_is_recovered(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "hang:h", *[f"slow:0.1:n{i}" for i in range(12)])
    worker = ("--queue", Q, *THREADED, "--concurrency", "4", "--worker-id", "w1")
    first = taskd.consume(redis_server.url, *worker, "--task-timeout", "2")
    # the other threads go on with the queue while one hangs
    wait_until(lambda: len(taskd.done_bodies()) == 12, 15, "the twelve others done")
    assert first.wait(15) == 70
    stall = first.events("watchdog.stall")[0]
    assert stall["task_age_seconds"] > 2
    assert "taskd-handler" in stall["stacks"]
    assert held(redis_server, "w1") == [b"hang:h"]
    second = taskd.consume(redis_server.url, *worker, "--task-timeout", "60")
    assert second.wait_for_event("recovery.own_tasks", 15)[0]["returned"] == 1
    attempts = redis_server.client().hgetall(f"{Q}:attempts")
    assert list(attempts.values()) == [b"1"]


def test_reconciliation_keeps_every_task_in_flight_and_returns_only_the_unseen_one(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "slow:2:dup", "slow:2:dup", "slow:2:other")
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *THREADED, "--concurrency", "3", "--worker-id", "w1",
        "--recovery-interval", "0.5",
    )  # fmt: skip
    wait_until(lambda: len(started(taskd)) == 3, 15, "three tasks running")
    # a claim whose reply was lost: one more copy in the processing list, unseen by taskd
    redis_server.client().lpush(f"{Q}:processing:w1", "slow:2:dup")
    returned = daemon.wait_for_event("claim.reply_lost", 10)[0]
    assert returned["returned"] == 1  # the two running copies of "dup" were kept
    wait_until(lambda: len(taskd.done_bodies()) == 4, 15, "the four tasks done")
    assert sorted(started(taskd)) == ["slow:2:dup"] * 3 + ["slow:2:other"]
    wait_until(lambda: not held(redis_server, "w1"), 5, "every task acked")
    assert redis_server.client().llen(Q) == 0


def test_drain_acks_what_finishes_and_exits_75_leaving_only_the_hung_task(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "hang:h", "slow:1:x", "slow:1:y")
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *THREADED, "--concurrency", "3", "--worker-id", "w1",
        "--drain-timeout", "3",
    )  # fmt: skip
    wait_until(lambda: len(started(taskd)) == 3, 15, "three tasks running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 75
    assert sorted(taskd.done_bodies()) == ["slow:1:x", "slow:1:y"]
    assert len(daemon.events("task.done")) == 2  # acked during the drain, each on its own
    assert held(redis_server, "w1") == [b"hang:h"]  # left for recovery


def test_hung_coroutine_among_many_exits_70_with_its_await_in_the_dump(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "hang:h", *[f"slow:0.2:n{i}" for i in range(20)])
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *ASYNC, "--concurrency", "10", "--worker-id", "w1",
        "--task-timeout", "2",
    )  # fmt: skip
    wait_until(lambda: len(taskd.done_bodies()) == 20, 15, "the twenty others done")
    assert daemon.wait(15) == 70
    stacks = daemon.events("watchdog.stall")[0]["stacks"]
    assert "Coroutines of async handlers" in stacks and "async_record" in stacks
    assert held(redis_server, "w1") == [b"hang:h"]
