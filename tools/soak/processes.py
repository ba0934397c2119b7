"""The soak's own child processes and their /proc: the chaos proxy, supervisord's RPC.

Spawning and ending them, and the Redis under test, are the harness's (tools/harness).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from xmlrpc.client import ServerProxy

from tools.harness import end_process, free_port, free_port_block, poll_until, spawn
from tools.soak.settings import ROOT, StackError


def port_block(count: int) -> int:
    """A free block of `count` loopback ports (its prefix); StackError when there is none."""
    try:
        return free_port_block(count)
    except OSError as exc:
        raise StackError(str(exc)) from None


def ancestors() -> set[int]:
    """This process and its parents up to init: a `--run-dir` given to `make soak` is in make's
    command line too, and the soak must not take its own caller for a leftover."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])  # the field after state
        except (OSError, IndexError, ValueError):
            break
    return found


def proc_status(pid: int) -> tuple[float, int, str] | None:
    """(RSS in MB, open fds, state letter) of a live process from /proc; None when gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            text = handle.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss_kb, state = 0.0, "?"
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = float(line.split()[1])
        elif line.startswith("State:"):
            state = line.split()[1]
    return rss_kb / 1024.0, fds, state


class ProxyControl:
    """The chaos proxy's HTTP control API (tools/chaos_proxy), with deadlines."""

    def __init__(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/mode", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def set_mode(self, mode: str, **params: float) -> dict[str, Any]:
        body = json.dumps({"mode": mode, **params}).encode()
        req = urllib.request.Request(f"{self.base}/mode", data=body, method="PUT")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"proxy refused mode {mode}: {exc.read()[:200]!r}") from None


class ProxyProcess:
    """`python -m tools.chaos_proxy` as a child process: its own GIL, its own RSS in the report."""

    def __init__(self, target_port: int, log: Path) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.control_port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.control = ProxyControl("127.0.0.1", self.control_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = spawn(
            [
                sys.executable,
                "-m",
                "tools.chaos_proxy",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--target",
                f"127.0.0.1:{self.target_port}",
                "--control",
                f"127.0.0.1:{self.control_port}",
                "--connect-timeout",
                "1",
            ],
            self.log,
            env=env,
            cwd=ROOT,
        )
        if not poll_until(lambda: self.control.state()["mode"] == "pass", 15, 0.1):
            raise StackError(f"chaos proxy did not start within 15s; see {self.log}")

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        end_process(self.proc, 10.0, "chaos proxy", hurry)


class _RpcConnection(HTTPConnection):
    """HTTP over supervisord's unix socket, with a deadline on connect and every read."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def supervisor_rpc(serverurl: str, timeout: float = 10.0) -> Any:
    """supervisord's XML-RPC `supervisor` namespace; every call has a deadline."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl)
    if serverurl.startswith("unix://"):
        path = serverurl[len("unix://") :]
        transport._get_connection = lambda: _RpcConnection(path, timeout)
    else:
        parsed = urllib.parse.urlsplit(serverurl)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        transport._get_connection = lambda: HTTPConnection(host, port, timeout=timeout)
    return ServerProxy("http://127.0.0.1", transport=transport).supervisor
