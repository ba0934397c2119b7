"""The stack under a real supervisord: stuck, hanging, killed and stopped workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from conftest import Stack, wait_until

Q = "task:prodcons:queue"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


STALL = 4.0
FAST_ENV = {
    "TASKD_BLOCK_TIMEOUT": "1",
    "TASKD_SOCKET_TIMEOUT": "2",
    "TASKD_STALL_TIMEOUT": str(STALL),
    "TASKD_BACKOFF_CAP": "0.5",
    "TASKD_RETRY_BASE": "0.05",
    "TASKD_RETRY_CAP": "0.2",
    "TASKD_HEARTBEAT_TTL": "3",
    "TASKD_RECOVERY_INTERVAL": "1",
}


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(**FAST_ENV)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def client(stack: Stack) -> redis.Redis:
    return redis.Redis(port=stack.redis_port, socket_timeout=5, socket_connect_timeout=5)


def test_all_programs_reach_running_and_supervisorctl_lists_them(stack: Stack) -> None:
    names = ("redis", "consumer_00", "consumer_01", "subscriber", "web", "watchdog")
    try:
        wait_until(lambda: all(stack.state(n) == "RUNNING" for n in names), 30, "all RUNNING")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {stack.states()}") from None
    out = stack.ctl("status").stdout
    for line in (
        "redis ",
        "consumer:consumer_00",
        "consumer:consumer_01",
        "subscriber ",
        "web ",
        "watchdog ",
    ):
        assert line in out, out
    assert out.count("RUNNING") == len(names), out
    sock = stack.root / "var/run/supervisor.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o700"
    # the web producer served by supervisord pushes a task the consumers then handle
    import http.client

    # supervisord calls web RUNNING after startsecs, which may come before gunicorn listens
    wait_until(lambda: _listening(stack.web_port), 15, "the web producer listening")
    conn = http.client.HTTPConnection("127.0.0.1", stack.web_port, timeout=10)
    conn.request("GET", "/prodcons")
    assert conn.getresponse().status == 302
    wait_until(lambda: any(b.isdigit() for b in stack.done_bodies()), 15, "the web task handled")


def test_sigstopped_consumer_is_restarted_by_the_outside_watchdog(stack: Stack) -> None:
    try:
        wait_until(lambda: stack.state("watchdog") == "RUNNING", 15, "watchdog RUNNING")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {stack.states()}") from None
    r = client(stack)
    r.lpush(Q, "slow:2:stuck-task")
    wait_until(lambda: stack.records(), 15, "the task to start")
    holder_pid = int(stack.records()[0][0])
    name = next(n for n, i in stack.infos().items() if i["pid"] == holder_pid)
    os.kill(holder_pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_until(
            lambda: stack.pid(name) != holder_pid and stack.state(name) == "RUNNING",
            STALL + 15,
            "the watchdog to restart the stopped consumer",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder_pid, signal.SIGKILL)
    assert time.monotonic() - stopped_at <= STALL + 15
    wait_until(lambda: "slow:2:stuck-task" in stack.done_bodies(), 20, "the stuck task done")
    log = stack.log("watchdog.log")
    restart = [json.loads(x) for x in log.splitlines() if '"watchdog.restart"' in x]
    assert restart and restart[0]["process"] == f"consumer:{name}"
    assert restart[0]["pid"] == holder_pid and restart[0]["heartbeat_age"] > STALL


def test_hanging_handler_exits_70_is_restarted_and_dead_lettered_while_others_flow() -> None:
    s = Stack(**FAST_ENV, TASKD_TASK_TIMEOUT="2", TASKD_MAX_ATTEMPTS="2")
    try:
        s.start()
        r = client(s)
        r.lpush(Q, "hang:poison")
        for i in range(20):
            r.lpush(Q, f"ok{i}")
        wait_until(lambda: r.llen(f"{Q}:dead") == 1, 40, "the hanging task dead-lettered")
        assert json.loads(r.lindex(f"{Q}:dead", 0))["body"] == "hang:poison"
        wait_until(lambda: {f"ok{i}" for i in range(20)} <= set(s.done_bodies()), 20, "others")
        logs = s.log("consumer_00.log") + s.log("consumer_01.log")
        assert logs.count('"watchdog.stall"') == 2
        main_log = s.log("supervisord.log")
        assert "exit status 70" in main_log
    finally:
        s.stop()


def test_kill9_of_a_consumer_is_restarted_and_nothing_is_lost(stack: Stack) -> None:
    r = client(stack)
    bodies = [f"k{i}" for i in range(200)]
    r.lpush(Q, *bodies[:100])
    wait_until(lambda: len(stack.done_bodies()) >= 20, 15, "tasks flowing")
    pid = stack.pid("consumer_00")
    os.kill(pid, signal.SIGKILL)
    r.lpush(Q, *bodies[100:])
    wait_until(
        lambda: stack.pid("consumer_00") != pid and stack.state("consumer_00") == "RUNNING",
        15,
        "supervisord to restart it",
    )
    wait_until(lambda: set(bodies) <= set(stack.done_bodies()), 30, "all tasks done")


def test_supervisorctl_stop_drains_exits_zero_and_loses_nothing(stack: Stack) -> None:
    r = client(stack)
    bodies = [f"slow:0.3:d{i}" for i in range(30)]
    r.lpush(Q, *bodies)
    wait_until(lambda: len(stack.done_bodies()) >= 2, 15, "tasks flowing")
    result = stack.ctl("stop", "consumer:*", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.state("consumer_00") == "STOPPED" and stack.state("consumer_01") == "STOPPED"
    main_log = stack.log("supervisord.log")
    assert main_log.count("stopped: consumer_0") == 2
    assert "(exit status 0)" in main_log and "SIGKILL" not in main_log
    held = sum(r.llen(k) for k in r.scan_iter(match=f"{Q}:processing:*"))
    assert held == 0
    done = set(stack.done_bodies())
    pending = {b.decode() for b in r.lrange(Q, 0, -1)}
    assert set(bodies) == done | pending
    started = {b for _, phase, b in stack.records() if phase == "start"}
    assert started <= done  # every task that was started was finished (drained), none lost
