"""What the web producer's tests share: a `taskd web` on a free port, and JSON over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from conftest import Daemon, DaemonFactory, free_port, wait_until

BOOT_DEADLINE = 20.0  # seconds for a web process to answer /healthz


def answers_healthz(base: str) -> bool:
    """True once the server at `base` (http://host:port) answers /healthz with 200."""
    with urllib.request.urlopen(f"{base}/healthz", timeout=2) as answer:
        return bool(answer.status == 200)


def start_taskd_web(taskd: DaemonFactory, redis_url: str, *args: str) -> tuple[Daemon, int]:
    """`taskd web` on a free loopback port, once it answers; (the process, its port)."""
    port = free_port()
    server = taskd.start("web", "--bind", f"127.0.0.1:{port}", "--redis-url", redis_url, *args)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers_healthz(base), BOOT_DEADLINE, f"taskd web on port {port}")
    return server, port


def request_json(
    url: str,
    doc: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, or of a JSON POST of `doc` when it is given."""
    data = json.dumps(doc).encode() if doc is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())
