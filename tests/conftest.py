"""Fixtures on the one harness (tools.harness): real redis-server processes on free loopback
ports, real taskd subprocesses, the supervisord stack running the tests' handlers.

Never port 6379, never fakeredis: every server a test talks to is started (and stopped) here.
RedisServer, wait_until, stays_true and free_port are re-exported for the tests' imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handlers_for_tests import RECORD_ENV, read_records
from tools.harness import RedisServer, free_port, stays_true, wait_until
from tools.harness import stack as harness_stack
from tools.harness.memory import make_full

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
__all__ = [
    "ROOT",
    "TESTS",
    "Daemon",
    "DaemonFactory",
    "RedisServer",
    "Stack",
    "blocked_claims",
    "fill",
    "free_port",
    "stays_true",
    "wait_until",
]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    server = RedisServer(tmp_path / "redis-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with a 4 MB maxmemory and noeviction (made full by `fill`)."""
    server = RedisServer(tmp_path / "full", maxmemory="4mb", maxmemory_policy="noeviction")
    server.start()
    yield server
    server.stop()


def fill(server: RedisServer) -> None:
    """Fill until Redis refuses with OOM, then keep it full (key "filler").

    maxmemory is then set a margin below what is used: freed client buffers, or draining a
    few small tasks, must not bring Redis back under its limit during the test.
    """
    client = server.client()
    make_full(client, 256 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")


def blocked_claims(admin: redis.Redis, worker: str) -> set[int]:
    """Server-side ids of `worker`'s claim connections blocked in BLMOVE now (CLIENT LIST).

    What "idle in a blocking claim" looks like from Redis: wait on it instead of sleeping.
    """
    return {
        int(c["id"])
        for c in admin.client_list()
        if c.get("name") == f"taskd-claim:{worker}" and "b" in str(c.get("flags", ""))
    }


class Daemon:
    """A `taskd` subprocess, as a user would start it; its JSON log lines are kept in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (non-JSON lines come back as {"raw": ...})."""
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"raw": raw})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_for_event(self, name: str, timeout: float, count: int = 1) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (found := self.events(name)) and len(found) >= count and found,
            timeout,
            f"log event {name!r} x{count} from taskd pid {self.pid}",
        )

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log_file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log_file.close()


class DaemonFactory:
    """Starts taskd subprocesses for one test and kills what is left at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Daemon] = []
        self.record = tmp / "record.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
        env[RECORD_ENV] = str(self.record)
        env["TASKD_LOG_FORMAT"] = "json"
        env.update(extra)
        return env

    def start(self, *args: str, env: dict[str, str] | None = None) -> Daemon:
        log_path = self.tmp / f"taskd-{len(self.started)}.log"
        daemon = Daemon(list(args), env or self.env(), log_path)
        self.started.append(daemon)
        return daemon

    def consume(self, redis_url: str, *args: str, **env: str) -> Daemon:
        """`taskd consume` with test-friendly short timeouts unless overridden."""
        defaults = {
            "--block-timeout": "0.5",
            "--retry-base": "0.05",
            "--retry-cap": "0.2",
            "--backoff-cap": "0.5",
            "--backoff-base": "0.05",
        }
        given = {a for a in args if a.startswith("--")}
        extra = [x for k, v in defaults.items() if k not in given for x in (k, v)]
        return self.start("consume", "--redis-url", redis_url, *extra, *args, env=self.env(**env))

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:  # noqa: A002
        """A one-shot CLI command (enqueue, status, ...)."""
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args],
            input=input,
            capture_output=True,
            env=self.env(),
            cwd=str(ROOT),
            timeout=timeout,
        )

    def records(self) -> list[tuple[str, str, str]]:
        """(pid, phase, body) lines written by tests/handlers_for_tests.py."""
        return read_records(self.record)

    def done_bodies(self) -> list[str]:
        return [body for _, phase, body in self.records() if phase == "done"]

    def cleanup(self) -> None:
        for daemon in self.started:
            daemon.stop()


@pytest.fixture
def taskd(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start taskd processes; all are killed at the end of the test."""
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.cleanup()


class Stack(harness_stack.Stack):
    """The harness's supervisord stack, its programs running a handler of handlers_for_tests."""

    def __init__(self, handler: str = "handlers_for_tests:record", **env: str) -> None:
        super().__init__(handler, pythonpath=[TESTS], env=env)
        self.record = self.root / "record.log"
        self.env.setdefault(RECORD_ENV, str(self.record))

    def records(self) -> list[tuple[str, str, str]]:
        """(pid, phase, body) lines the stack's handlers wrote."""
        return read_records(self.record)

    def done_bodies(self) -> list[str]:
        return [body for _, phase, body in self.records() if phase == "done"]
