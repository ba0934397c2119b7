"""systemd's notify protocol, heard on a real notify socket the test opens.

Each test binds an AF_UNIX datagram socket (a path, or an abstract name), starts a real
`taskd consume` or `taskd subscribe` with NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at it,
against a real redis-server, and checks what a service manager would hear.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DaemonFactory, RedisServer, stays_true, wait_until
from daemon import sd_notify
from tools.harness.ports import free_port

WATCHDOG_USEC = "1000000"  # WatchdogSec=1: pings every 0.5 s


class NotifySocket:
    """The service manager's end: every datagram received, with the time it arrived."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = ""
        if abstract:
            name = f"taskd-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:  # short path: AF_UNIX paths stop at 107 bytes, pytest's tmp_path can be longer
            self.dir = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def with_field(self, name: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [
            (t, m)
            for t, m in list(self.messages)
            if name in m and (value is None or m[name] == value)
        ]

    def pings(self, after: float = 0.0) -> list[float]:
        return [t for t, _ in self.with_field("WATCHDOG", "1") if t > after]

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_field("STATUS")]

    def wait_for(self, name: str, value: str, timeout: float) -> float:
        """When the first `name=value` arrived."""
        found = wait_until(lambda: self.with_field(name, value), timeout, f"{name}={value}")
        return float(found[0][0])

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def max_gap(times: list[float]) -> float:
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def hold_the_gil(body: bytes) -> None:
    """A handler stuck in C code that never lets go of the GIL (catastrophic backtracking):
    no other thread of the process runs, the stall detector included."""
    re.match(r"(a+)+$", "a" * 40 + "b")


def notify_env(body: bytes) -> None:
    """Write what a child process of the handler would inherit of systemd's variables."""
    names = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    seen = {n: os.environ.get(n) for n in names}
    Path(os.environ["TEST_ENV_OUT"]).write_text(repr(seen))


def test_ready_comes_only_once_redis_answers_with_status_lines(
    taskd: DaemonFactory, notify: NotifySocket, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", free_port())
    server.workdir.mkdir()
    env_out = tmp_path / "env.txt"
    daemon = taskd.consume(
        server.url,
        "--handler",
        "test_systemd_notify:notify_env",
        **notify.env(WATCHDOG_USEC=WATCHDOG_USEC, TEST_ENV_OUT=str(env_out)),
    )
    try:
        daemon.wait_for_event("redis.disconnected", 20)
        wait_until(
            lambda: any("Redis unreachable since" in s for s in notify.statuses()), 10, "outage"
        )
        wait_until(lambda: len(notify.pings()) >= 3, 10, "pings while Redis is down")
        assert not notify.with_field("READY"), "READY=1 before Redis was reachable"
        started = time.monotonic()
        server.start()
        ready_at = notify.wait_for("READY", "1", 20)
        assert ready_at > started
        ready = notify.with_field("READY", "1")
        assert len(ready) == 1
        assert ready[0][1]["STATUS"] == "consumer: consuming queue task:prodcons:queue"
        assert notify.statuses()[0].startswith("consumer: connecting to redis://127.0.0.1:")

        server.client().lpush("task:prodcons:queue", b"x")
        wait_until(env_out.exists, 20, "the handler ran")
        unset = dict.fromkeys(("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"))
        assert env_out.read_text() == repr(unset)  # gone for the handler's children

        server.stop()  # a second outage: a STATUS line, no second READY
        wait_until(
            lambda: sum("Redis unreachable since" in s for s in notify.statuses()) >= 2, 20, "2nd"
        )
        server.start()
        wait_until(
            lambda: notify.statuses().count("consumer: consuming queue task:prodcons:queue") >= 2,
            20,
            "back",
        )
        assert len(notify.with_field("READY")) == 1
    finally:
        daemon.stop()
        server.stop()


def test_sigterm_sends_stopping_then_the_drain_ends_cleanly(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    daemon = taskd.consume(redis_server.url, "--handler", "daemon.handlers:noop", **notify.env())
    notify.wait_for("READY", "1", 20)
    assert not notify.with_field("STOPPING")
    daemon.signal(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING", "1", 10)
    assert daemon.wait(20) == 0
    message = notify.with_field("STOPPING", "1")[0][1]
    assert message["STATUS"].startswith("consumer: draining (up to 30 s)")
    assert not notify.pings(), "WATCHDOG=1 without WATCHDOG_USEC"
    assert stopping > notify.with_field("READY")[0][0]


def test_watchdog_pings_follow_progress_and_stop_when_the_process_freezes(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    daemon = taskd.consume(
        redis_server.url,
        "--handler",
        "daemon.handlers:noop",
        **notify.env(WATCHDOG_USEC=WATCHDOG_USEC, WATCHDOG_PID=""),
    )
    notify.wait_for("READY", "1", 20)
    start = time.monotonic()
    wait_until(lambda: len(notify.pings(start)) >= 6, 15, "six pings")
    pings = notify.pings(start)
    assert max_gap(pings) < 1.0, pings  # within WatchdogSec=1
    assert min(b - a for a, b in zip(pings, pings[1:], strict=False)) > 0.2  # ~0.5 s, no flood

    daemon.signal(signal.SIGSTOP)  # frozen as a whole: what no in-process thread can report
    try:
        frozen = time.monotonic() + 0.3  # a datagram already in flight may still land
        stays_true(lambda: notify.pings(frozen) == [], 2.0, "silence of a frozen process")
        assert notify.pings(frozen) == []
    finally:
        daemon.signal(signal.SIGCONT)
    thawed = time.monotonic()
    wait_until(lambda: len(notify.pings(thawed)) >= 2, 10, "pings after SIGCONT")


def test_watchdog_pings_stop_while_a_handler_holds_the_gil(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    """Stuck in C code: the stall detector cannot run, so systemd must notice the silence."""
    daemon = taskd.consume(
        redis_server.url,
        "--handler",
        "test_systemd_notify:hold_the_gil",
        "--task-timeout",
        "1",
        **notify.env(WATCHDOG_USEC=WATCHDOG_USEC),
    )
    notify.wait_for("READY", "1", 20)
    wait_until(lambda: len(notify.pings()) >= 2, 10, "pings before the task")
    redis_server.client().lpush("task:prodcons:queue", b"stuck")
    wait_until(lambda: redis_server.client().llen("task:prodcons:queue") == 0, 10, "claimed")
    stuck = time.monotonic() + 0.6  # one tick for a ping that was already due
    stays_true(lambda: notify.pings(stuck) == [], 3.0, "silence while the GIL is held")
    assert notify.pings(stuck) == []
    assert daemon.proc.poll() is None  # alive and stuck: only systemd's watchdog can act
    daemon.stop()


def test_watchdog_pings_last_while_a_task_is_within_its_timeout_and_stop_past_it(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    """The stall rule: a running task is progress until --task-timeout, then the loop is stuck."""
    daemon = taskd.consume(
        redis_server.url,
        "--handler",
        "daemon.handlers:sleep",
        "--task-timeout",
        "3",
        **notify.env(WATCHDOG_USEC=WATCHDOG_USEC),
    )
    notify.wait_for("READY", "1", 20)
    redis_server.client().lpush("task:prodcons:queue", b"60")
    began = time.monotonic()
    assert daemon.wait(20) == 70  # the stall detector: stacks dumped, exit 70
    during = notify.pings(began)
    assert len(during) >= 4, during  # ~0.5 s apart for the 3 s the task was allowed
    assert during[-1] - began < 3.0 + 1.5  # none once the task was past its timeout
    assert daemon.events("watchdog.stall")


def test_pings_reach_an_abstract_socket(taskd: DaemonFactory, redis_server: RedisServer) -> None:
    notify = NotifySocket(abstract=True)
    try:
        assert notify.env_value.startswith("@")
        taskd.consume(
            redis_server.url,
            "--handler",
            "daemon.handlers:noop",
            **notify.env(WATCHDOG_USEC=WATCHDOG_USEC),
        )
        notify.wait_for("READY", "1", 20)
        wait_until(lambda: len(notify.pings()) >= 2, 10, "pings on the abstract socket")
    finally:
        notify.close()


def test_watchdog_of_another_process_is_not_pinged(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    """WATCHDOG_PID names a parent: its watchdog is not ours to feed (READY still is)."""
    taskd.consume(
        redis_server.url,
        "--handler",
        "daemon.handlers:noop",
        **notify.env(WATCHDOG_USEC=WATCHDOG_USEC, WATCHDOG_PID=str(os.getpid())),
    )
    ready = notify.wait_for("READY", "1", 20)
    # three ping intervals of silence
    stays_true(lambda: notify.pings(ready - 5) == [], 1.5, "no ping for another's watchdog")
    assert notify.pings(ready - 5) == []


def test_subscriber_is_ready_once_subscribed_and_pings(
    taskd: DaemonFactory, notify: NotifySocket, redis_server: RedisServer
) -> None:
    daemon = taskd.start(
        "subscribe",
        "--redis-url",
        redis_server.url,
        "--channel",
        "news",
        "--handler",
        "daemon.handlers:noop",
        env=taskd.env(**notify.env(WATCHDOG_USEC=WATCHDOG_USEC)),
    )
    notify.wait_for("READY", "1", 20)
    assert notify.with_field("READY")[0][1]["STATUS"] == "subscriber: subscribed to channel news"
    wait_until(lambda: len(notify.pings()) >= 2, 10, "subscriber pings")
    daemon.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1", 10)
    assert daemon.wait(20) == 0


# -- the sender on its own: sends that cannot be delivered neither block nor raise ----------


def test_sends_to_a_vanished_or_full_socket_neither_block_nor_raise() -> None:
    gone = sd_notify.Notifier("/nonexistent/notify")
    assert gone.send("STATUS=x") is False
    assert gone.dropped == 1

    receiver = NotifySocket()
    try:
        receiver._closed.set()  # stop reading: the socket's queue fills up
        receiver._thread.join(5)
        notifier = sd_notify.Notifier(receiver.env_value)
        began = time.monotonic()
        results = [notifier.send("STATUS=" + "x" * 1000) for _ in range(2000)]
        assert time.monotonic() - began < 5
        assert results[0] is True and results[-1] is False  # the full queue drops, silently
    finally:
        with contextlib.suppress(OSError):
            receiver.sock.close()
        shutil.rmtree(receiver.dir, ignore_errors=True)


def test_environment_is_read_once_and_removed() -> None:
    env = {"NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = sd_notify.Notifier.from_environ(env)
    assert env == {}
    assert notifier.address == "\0abc"
    assert notifier.ping_interval == 15.0
    assert notifier.tick_interval(1.0) == 1.0
    assert sd_notify.Notifier.from_environ({}).enabled is False
    assert sd_notify.socket_address("relative/path") is None
    assert sd_notify.watchdog_interval("30000000", "1", own_pid=2) is None
    assert sd_notify.watchdog_interval("0", None, own_pid=2) is None
    assert sd_notify.watchdog_interval("1000000", None, own_pid=2) == 0.5
