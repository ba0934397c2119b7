"""Handlers that misbehave, run by the real `taskd consume` against a real redis-server.

An async handler really runs; one that raises is a failed attempt. A handler that calls
sys.exit() or raises KeyboardInterrupt, or whose error text cannot be encoded or rendered, is a
failed attempt too (logged, retried, dead-lettered) and the consumer goes on. What can never be
a handler is refused at startup: one line, exit 78.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT, Daemon, DaemonFactory, RedisServer, wait_until

Q = "hostile"


def push(server: RedisServer, *bodies: str) -> None:
    client = server.client()
    for body in bodies:
        client.lpush(Q, body)


def dead_letters(server: RedisServer) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in server.client().lrange(f"{Q}:dead", 0, -1)]


def starts(taskd: DaemonFactory, body: str) -> int:
    return sum(1 for _, phase, b in taskd.records() if phase == "start" and b == body)


def consume(server: RedisServer, taskd: DaemonFactory, handler: str, *args: str) -> Daemon:
    return taskd.consume(
        server.url, "--queue", Q, "--handler", f"handlers_for_tests:{handler}", *args
    )


def test_async_handler_runs_every_task_once_on_one_reused_loop(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"async-{i}" for i in range(20)]
    push(redis_server, *bodies)
    daemon = consume(redis_server, taskd, "async_record")
    wait_until(lambda: len(daemon.events("task.done")) == 20, 30, "20 tasks done")
    assert Counter(taskd.done_bodies()) == Counter(bodies)  # each really ran, once
    loops = {body for _, phase, body in taskd.records() if phase == "loop"}
    assert len(loops) == 1, f"one event loop for every task, got {len(loops)}"
    assert daemon.proc.poll() is None
    assert not [line for line in daemon.lines() if "never awaited" in json.dumps(line)]


def test_async_handler_that_raises_is_retried_then_dead_lettered(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "doomed")
    daemon = consume(redis_server, taskd, "async_fail", "--max-attempts", "3")
    wait_until(lambda: dead_letters(redis_server), 20, "the dead letter")
    (entry,) = dead_letters(redis_server)
    assert entry["attempts"] == 3
    assert entry["error"] == "RuntimeError: async handler refused doomed"
    assert starts(taskd, "doomed") == 3
    assert len(daemon.events("task.failed")) == 2
    assert "async_fail" in daemon.events("task.dead_lettered")[0]["traceback"]


def test_async_handler_past_task_timeout_trips_the_watchdog_exit_70(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "forever")
    daemon = consume(redis_server, taskd, "async_hang", "--task-timeout", "1")
    assert daemon.wait(20) == 70
    (stall,) = daemon.events("watchdog.stall")
    assert "task-timeout" in stall["reason"]
    assert "run_coroutine" in stall["stacks"]  # the main thread is in the handler's loop
    assert "async_hang" in stall["stacks"]  # and the coroutine's own frame is shown
    assert starts(taskd, "forever") == 1
    assert "forever" not in taskd.done_bodies()
    held = redis_server.client().keys(f"{Q}:processing:*")
    assert held, "the task stays held, to be recovered"


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("generator", "'generator' is a generator function"),
        ("async_generator", "'async_generator' is a generator function"),
        ("NotAFunction", "'NotAFunction' is a class"),
        ("NOT_CALLABLE", "'NOT_CALLABLE' is a str, not callable"),
    ],
)
def test_what_cannot_be_a_handler_is_refused_at_startup_with_one_line(
    redis_server: RedisServer, taskd: DaemonFactory, handler: str, expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "consume", "--redis-url", redis_server.url]
        + ["--queue", Q, "--handler", f"handlers_for_tests:{handler}"],
        capture_output=True,
        text=True,
        env=taskd.env(),
        cwd=str(ROOT),
        timeout=30,
    )
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"--handler='handlers_for_tests:{handler}'" in lines[0]
    assert expected in lines[0]
    assert "expected a function (def or async def)" in lines[0]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("exit:0", "HandlerAborted: SystemExit(0) raised by the handler"),
        ("exit:3", "HandlerAborted: SystemExit(3) raised by the handler"),
        ("interrupt", "HandlerAborted: KeyboardInterrupt() raised by the handler"),
        (
            "unprintable",
            "HandlerError: _UnprintableError raised by the handler; its message could not be "
            "rendered (RuntimeError in __str__)",
        ),
    ],
)
def test_handler_that_exits_or_interrupts_is_a_failed_attempt_and_the_consumer_goes_on(
    redis_server: RedisServer, taskd: DaemonFactory, body: str, error: str
) -> None:
    push(redis_server, body)
    daemon = consume(redis_server, taskd, "misbehave", "--max-attempts", "2")
    wait_until(lambda: dead_letters(redis_server), 20, f"{body} dead-lettered")
    (entry,) = dead_letters(redis_server)
    assert entry["error"] == error
    assert entry["attempts"] == 2
    assert starts(taskd, body) == 2
    (failed,) = daemon.events("task.failed")
    assert failed["error"] == error
    assert "misbehave" in failed["traceback"]  # the handler's own frames are logged
    assert daemon.proc.poll() is None
    push(redis_server, "after")
    wait_until(lambda: "after" in taskd.done_bodies(), 15, "the next task done")
    assert daemon.proc.poll() is None


def test_handler_error_with_lone_surrogate_is_logged_retried_and_dead_lettered(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "surrogate")
    daemon = consume(redis_server, taskd, "misbehave", "--max-attempts", "2")
    failed = daemon.wait_for_event("task.failed", 20)[0]
    # the log line is valid UTF-8 JSON, the surrogate escaped as text
    raw = daemon.log_path.read_bytes()
    raw.decode("utf-8")
    assert failed["error"] == "FileNotFoundError: no such input file: report-\\udcff.csv"
    wait_until(lambda: dead_letters(redis_server), 20, "the dead letter")
    (entry,) = dead_letters(redis_server)
    assert entry["attempts"] == 2
    assert "FileNotFoundError: no such input file: report-" in str(entry["error"])
    assert daemon.proc.poll() is None
    push(redis_server, "after")
    wait_until(lambda: "after" in taskd.done_bodies(), 15, "the next task done")
    assert daemon.proc.poll() is None
