"""One redis-server child on a free loopback port, in a directory of its own.

Used by the tests (a fresh server per test) and by the soak (the server under test, with AOF so
kill -9 loses nothing). Never port 6379, never a server the harness did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tools.harness.ports import free_port
from tools.harness.processes import end_process, kill9, spawn

# A probe asks once: redis-py's default retries (with backoff) would make every "not yet" or
# "gone" answer take seconds.
_PROBE: dict[str, Any] = {
    "socket_timeout": 1,
    "socket_connect_timeout": 1,
    "retry": Retry(NoBackoff(), 0),
}


class RedisStartError(RuntimeError):
    """redis-server did not answer in time, or exited while starting (its log tail says why)."""


class RedisServer:
    """A redis-server on 127.0.0.1:`port` (a free one by default) with its data in `workdir`.

    `extra` arguments go to every start; `start(*more)` adds some to one start only. The named
    options cover what the tests and the soak ask for: AOF with fsync always, a password, an
    ACL file, a memory limit and its policy.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *extra: str,
        aof: bool = False,
        password: str | None = None,
        aclfile: Path | None = None,
        maxmemory: str | None = None,
        maxmemory_policy: str | None = None,
        log: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = list(extra)
        self.aof = aof
        self.password = password
        self.aclfile = aclfile
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.log = log or workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # wall clock of the last start that answered

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The live server's pid; None when it is not running."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def args(self, *more: str) -> list[str]:
        """The redis-server command line of a start."""
        binary = shutil.which("redis-server")
        if not binary:
            raise RedisStartError("redis-server not found on PATH (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", "", "--daemonize", "no", "--logfile", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []
        args += ["--appendonly", "no"] if not self.aof else []
        args += ["--enable-debug-command", "yes"]
        args += ["--requirepass", self.password] if self.password else []
        args += ["--aclfile", str(self.aclfile)] if self.aclfile else []
        args += ["--maxmemory", self.maxmemory] if self.maxmemory else []
        args += ["--maxmemory-policy", self.maxmemory_policy] if self.maxmemory_policy else []
        return [*args, *self.extra, *more]

    def start(self, *more: str, wait: bool = True, timeout: float = 15.0) -> RedisServer:
        """Start (again: from the AOF when `aof`); with `wait`, return once it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.args(*more), self.log)
        if wait:
            self.wait_answering(timeout)
        return self

    def wait_answering(self, timeout: float) -> None:
        """Return once the server answers; RedisStartError if it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc is None or self.proc.poll() is not None:
                raise RedisStartError(f"redis-server on port {self.port} exited: {self.tail()}")
            if time.monotonic() >= deadline:
                raise RedisStartError(
                    f"redis-server on port {self.port} did not answer within {timeout:g} s: "
                    f"{self.tail()}"
                )
            time.sleep(0.02)
        self.started_at = time.time()

    def answers(self) -> bool:
        """True when the server replies to PING (a refusal to an unauthenticated PING counts)."""
        client = redis.Redis(port=self.port, **_PROBE)
        try:
            return bool(client.ping())
        except (redis.AuthenticationError, redis.ResponseError):
            return True  # it answers: a password is required
        except redis.RedisError:
            return False
        finally:
            client.close()

    def ping(self) -> bool:
        """True when an authenticated PING succeeds (False on any error)."""
        try:
            client = self.client(**_PROBE)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server (with its password, if it has one)."""
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("socket_connect_timeout", 5)
        if self.password:
            kwargs.setdefault("password", self.password)
        return redis.Redis(port=self.port, **kwargs)

    def tail(self, chars: int = 600) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")[-chars:].strip() or "(empty log)"
        except OSError:
            return f"(no log at {self.log})"

    def stop(self, grace: float = 10.0, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop cleanly (SIGTERM), SIGKILL after `grace` s: bounded."""
        end_process(self.proc, grace, f"redis-server :{self.port}", hurry)

    def kill9(self) -> None:
        """Die now, as on a power cut: nothing but what AOF fsync'ed survives."""
        kill9(self.proc)

    def send(self, sig: int) -> None:
        """Signal the live server (SIGSTOP freezes it, SIGCONT thaws it)."""
        if self.pid is not None:
            os.kill(self.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open, nothing answers (a hung server)."""
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after `freeze`."""
        self.send(signal.SIGCONT)
