"""A process that may not consume with its worker id leaves nothing unrecoverable behind.

Real redis-server and taskd processes. The second queue's id is held (by a live process here,
or by a record of another host), the first queue's list holds a killed predecessor's task.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

from conftest import DaemonFactory, RedisServer, free_port, stays_true, wait_until

HANDLER = ("--handler", "handlers_for_tests:record")
HELD = "slow:30:held"


def _kill_holding(redis_server: RedisServer, taskd: DaemonFactory) -> None:
    """A consumer of queues a and b, worker W, killed (-9) while it runs a task of `a`."""
    client = redis_server.client()
    victim = taskd.consume(
        redis_server.url, "--queue", "a", "--queue", "b", *HANDLER, "--worker-id", "W"
    )
    client.lpush("a", HELD)
    wait_until(lambda: client.llen("a:processing:W") == 1, 10, "the victim to claim the task")
    victim.signal(signal.SIGKILL)
    victim.wait(5)


def _peer_runs_held(redis_server: RedisServer, taskd: DaemonFactory) -> None:
    peer = taskd.consume(
        redis_server.url,
        "--queue",
        "a",
        *HANDLER,
        "--worker-id",
        "peer",
        "--recovery-interval",
        "1",
    )
    wait_until(
        lambda: (str(peer.pid), "start", HELD) in taskd.records(),
        15,
        "a peer to recover and run the killed worker's task",
    )


def test_refused_restart_leaves_its_killed_predecessors_task_to_peer_recovery(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    _kill_holding(redis_server, taskd)
    holder = taskd.consume(redis_server.url, "--queue", "b", *HANDLER, "--worker-id", "W")
    wait_until(lambda: str(holder.pid).encode() in (client.get("b:alive:W") or b""), 10, "b held")
    refused = taskd.consume(
        redis_server.url, "--queue", "a", "--queue", "b", *HANDLER, "--worker-id", "W"
    )
    assert refused.wait(15) == 78
    # the id taken over on `a` was given back, but `a`'s list stays findable
    assert client.lrange("a:processing:W", 0, -1) == [HELD.encode()]
    assert b"W" in client.zrange("a:workers", 0, -1)
    _peer_runs_held(redis_server, taskd)


def test_process_waiting_for_an_id_held_elsewhere_holds_none_of_its_other_ids(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    _kill_holding(redis_server, taskd)
    elsewhere = {"token": "feed", "host": "elsewhere", "pid": 1, "since": time.time()}
    client.set("b:alive:W", json.dumps(elsewhere), px=120_000)
    waiting = taskd.consume(
        redis_server.url, "--queue", "a", "--queue", "b", *HANDLER, "--worker-id", "W"
    )
    waiting.wait_for_event("worker.id_held_elsewhere", 10)
    # it took `a` over from its dead predecessor, then gave it back: not renewed while waiting
    _peer_runs_held(redis_server, taskd)
    assert waiting.proc.poll() is None
    assert not any(pid == str(waiting.pid) for pid, _, _ in taskd.records())


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_waiting_for_an_id_held_elsewhere_is_alive_but_not_ready(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    elsewhere = {"token": "feed", "host": "elsewhere", "pid": 1, "since": time.time()}
    client.set("q:alive:W", json.dumps(elsewhere), px=120_000)
    client.lpush("q", "pending")
    port = free_port()
    waiting = taskd.consume(
        redis_server.url,
        *("--queue", "q", *HANDLER, "--worker-id", "W", "--metrics-port", str(port)),
        *("--socket-timeout", "1", "--stall-timeout", "2"),
    )
    waiting.wait_for_event("worker.id_held_elsewhere", 10)
    started = time.monotonic()
    why = "waiting for worker id 'W' of queue 'q', held by host elsewhere, pid 1, since"
    ready = wait_until(lambda: (r := _get(port, "/readyz")) and why in str(r) and r, 5, "why")
    assert ready[0] == 503, ready
    # twice the stall timeout: a restart cannot help
    stays_true(
        lambda: _get(port, "/healthz")[0] == 200,
        4 - (time.monotonic() - started),
        "/healthz 200 while waiting for the worker id",
        interval=0.5,
    )
    assert waiting.proc.poll() is None and taskd.records() == []
