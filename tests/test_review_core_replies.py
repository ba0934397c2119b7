"""An ack whose reply arrived is known, even when the claim sent with it lost its reply.

Real redis-server and taskd; between them a small TCP proxy that, once armed, forwards the
ack's reply of the next ack+claim pair and then resets the connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import DaemonFactory, RedisServer, free_port, wait_until

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "jobs"


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class CutAfterAckReply:
    """Proxy: forwards everything; once armed, cuts the pair's flow after the ack's reply."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.armed = threading.Event()
        self.fired = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.redis_port), timeout=5)
            client.settimeout(None)
            server.settimeout(None)
            pair = threading.Event()
            threading.Thread(target=self._up, args=(client, server, pair), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, pair), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, pair: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                first_pair = b"EVALSHA" in data and b"LMOVE" in data
                if first_pair and self.armed.is_set() and not self.fired.is_set():
                    pair.set()  # before the server can answer it
                server.sendall(data)

    def _down(self, server: socket.socket, client: socket.socket, pair: threading.Event) -> None:
        buffered = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not pair.is_set() or self.fired.is_set():
                    client.sendall(data)
                    continue
                buffered += data
                lines = buffered.split(b"\r\n")
                if len(lines) >= 4:  # the ack's reply: *2 :<removed> :<failures>
                    client.sendall(b"\r\n".join(lines[:3]) + b"\r\n")
                    self.fired.set()
                    _reset(client)
                    _reset(server)
                    return


@pytest.fixture
def cut(redis_server: RedisServer) -> Iterator[CutAfterAckReply]:
    proxy = CutAfterAckReply(redis_server.port)
    yield proxy
    proxy.stop()


def _acked_total(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return next(x for x in text.splitlines() if x.startswith("taskd_tasks_acked_total{"))


def test_ack_whose_reply_arrived_is_counted_when_the_paired_claims_reply_is_lost(
    redis_server: RedisServer, taskd: DaemonFactory, cut: CutAfterAckReply
) -> None:
    client = redis_server.client()
    port = free_port()
    daemon = taskd.consume(
        f"redis://127.0.0.1:{cut.port}/0",
        *("--queue", Q, *HANDLER, "--worker-id", "w1", "--metrics-port", str(port)),
    )
    client.lpush(Q, "warm-up")  # the pair to cut is a later one
    wait_until(lambda: taskd.done_bodies() == ["warm-up"], 10, "the warm-up task")
    wait_until(lambda: client.llen(f"{Q}:processing:w1") == 0, 5, "nothing held")
    cut.armed.set()
    client.lpush(Q, "slow:0.5:first", "second")  # `second` is claimed with first's ack
    wait_until(
        lambda: sorted(taskd.done_bodies()) == ["second", "slow:0.5:first", "warm-up"],
        15,
        "both tasks done",
    )
    assert cut.fired.is_set()
    assert daemon.events("task.ack_uncertain") == []
    assert len(daemon.events("task.done")) == 3
    lost = daemon.wait_for_event("claim.reply_lost", 5)
    assert lost[0]["returned"] == 1
    assert [b for _, phase, b in taskd.records() if phase == "start"].count("second") == 1
    assert _acked_total(port) == 'taskd_tasks_acked_total{queue="jobs"} 3.0'
    assert client.llen(Q) == 0 and client.llen(f"{Q}:processing:w1") == 0


def _noscript_errors(redis_server: RedisServer) -> int:
    stats = redis_server.client().info("errorstats")
    return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))


def test_scripts_are_loaded_before_use_at_start_and_after_a_redis_restart(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """No NOSCRIPT round trip for the first ack (or any script) of a process or of a server."""
    daemon = taskd.consume(redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1")
    redis_server.client().lpush(Q, "one")
    wait_until(lambda: taskd.done_bodies() == ["one"], 10, "the first task")
    assert _noscript_errors(redis_server) == 0
    redis_server.kill9()
    daemon.wait_for_event("redis.disconnected", 10)
    redis_server.start()  # an empty script cache
    daemon.wait_for_event("redis.reconnected", 15)
    redis_server.client().lpush(Q, "two")
    wait_until(lambda: taskd.done_bodies() == ["one", "two"], 10, "the task after the restart")
    assert _noscript_errors(redis_server) == 0
