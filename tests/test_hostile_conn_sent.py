"""A task runs twice only when its outcome may really have been applied: "sent or not".

`maybe_applied` is decided by whether the command's bytes were written to a connection (as
recorded by taskd's connection classes), not by the text of the error. Every exception here is
produced by a real redis-server: refused, full (maxclients), paused (SIGSTOP, DEBUG SLEEP) or
answering with an error; the end-to-end test has a real consumer whose ack needs a new
connection that the server refuses with "max number of clients reached".
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon.config import Settings
from daemon.connection import make_client
from daemon.keys import QueueKeys
from daemon.redis_errors import REFUSED, SENT, fatal_reason, is_transient, maybe_applied
from daemon.reliable import ReliableQueue

HANDLER = ("--handler", "handlers_for_tests:record")


def settings(url: str, **changes: float) -> Settings:
    """Short deadlines: a paused server shows as a timeout within a second."""
    base = Settings(redis_url=url, block_timeout=0.5, connect_timeout=0.5, socket_timeout=0.8)
    return dataclasses.replace(base, **changes).with_derived()


def raised(call: object) -> BaseException:
    assert callable(call)
    with pytest.raises(redis.RedisError) as info:
        call()
    return info.value


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "full", None, "--maxclients", "6")
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


def fill(port: int, admin: redis.Redis, limit: int) -> list[socket.socket]:
    """Raw connections that take every client slot left (checked by the server's count)."""
    taken = []
    for _ in range(limit - int(admin.info("clients")["connected_clients"])):
        taken.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    wait_until(
        lambda: int(admin.info("clients")["connected_clients"]) == limit, 5, "all slots taken"
    )
    return taken


# -- real exceptions, one by one -------------------------------------------------------------


def test_refused_connect_was_not_sent() -> None:
    client = make_client(settings(f"redis://127.0.0.1:{free_port()}/0"))
    exc = raised(lambda: client.lpush("q", "x"))
    assert getattr(exc, SENT) is False and not maybe_applied(exc)


def test_max_clients_reached_on_a_new_connection_was_not_sent(full_server: RedisServer) -> None:
    admin = full_server.client()
    taken = fill(full_server.port, admin, 6)
    try:
        client = make_client(settings(full_server.url), client_name="taskd-claim:w")
        exc = raised(lambda: client.lpush("q", "x"))
        assert "max number of clients" in str(exc)
        assert getattr(exc, SENT) is False and not maybe_applied(exc)
        pair = ReliableQueue(client, "q", "w")  # the ack+claim pair written at once
        exc = raised(lambda: pair._send_pair((("LPUSH", "q", "x"), ("LLEN", "q"))))
        assert getattr(exc, SENT) is False and not maybe_applied(exc)
    finally:
        for raw in taken:
            raw.close()
    assert admin.llen("q") == 0


def test_timeout_after_the_write_to_a_paused_server_may_be_applied(
    redis_server: RedisServer,
) -> None:
    client = make_client(settings(redis_server.url))
    client.ping()  # connected: the next command goes straight to the socket
    pair = ReliableQueue(make_client(settings(redis_server.url)), "q", "w")
    pair._send_pair((("PING",), ("PING",)))
    # the server holds every client's commands for 3 s: ours are sent, their fate unknown
    redis_server.client().execute_command("CLIENT", "PAUSE", "3000", "ALL")
    exc = raised(lambda: client.lpush("q", "x"))
    assert isinstance(exc, redis.TimeoutError)
    assert getattr(exc, SENT) is True and maybe_applied(exc)
    exc = raised(lambda: pair._send_pair((("LPUSH", "q", "y"), ("LLEN", "q"))))
    assert getattr(exc, SENT) is True and maybe_applied(exc)


def test_sigstopped_server_before_and_after_the_connection(redis_server: RedisServer) -> None:
    connected = make_client(settings(redis_server.url))
    connected.ping()
    pair = ReliableQueue(make_client(settings(redis_server.url)), "q", "w")
    pair._send_pair((("PING",), ("PING",)))  # a pooled connection, ready
    fresh = make_client(settings(redis_server.url))
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        # connected: the bytes reach the kernel's buffer, the reply never comes
        exc = raised(lambda: connected.lpush("q", "x"))
        assert getattr(exc, SENT) is True and maybe_applied(exc)
        exc = raised(lambda: pair._send_pair((("LPUSH", "q", "y"), ("LLEN", "q"))))
        assert getattr(exc, SENT) is True and maybe_applied(exc)
        # a new connection: TCP is accepted by the kernel, the handshake gets no answer
        exc = raised(lambda: fresh.lpush("q", "z"))
        assert isinstance(exc, redis.TimeoutError)
        assert getattr(exc, SENT) is False and not maybe_applied(exc)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    pushed = wait_until(lambda: redis_server.client().lrange("q", 0, -1), 5, "resumed")
    assert b"z" not in pushed  # the command that was never sent was never applied


def test_error_reply_is_refused_not_applied(redis_server: RedisServer) -> None:
    client = make_client(settings(redis_server.url))
    client.set("s", "a string")
    exc = raised(lambda: client.lpush("s", "x"))  # WRONGTYPE
    assert getattr(exc, REFUSED) is True and not maybe_applied(exc)


# -- end to end: an ack refused by a full server is retried, the handler runs once -----------


def test_ack_refused_by_a_full_server_is_retried_and_the_task_runs_once(
    full_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = taskd.consume(
        full_server.url,
        "--queue",
        "jobs",
        "--worker-id",
        "w1",
        "--connect-timeout",
        "1",
        "--stall-timeout",
        "60",
        *HANDLER,
    )
    admin = full_server.client()
    wait_until(
        lambda: any(c.get("name") == "taskd-claim:w1" for c in admin.client_list()),
        10,
        "the consumer's claim connection",
    )
    admin.lpush("jobs", "slow:2:once")
    wait_until(lambda: taskd.records(), 10, "the handler started")
    taken = fill(full_server.port, admin, 6)
    try:
        # the pooled claim connection dies while the handler runs: the ack needs a new one
        claim = [c for c in admin.client_list() if c.get("name") == "taskd-claim:w1"]
        for conn in claim:
            admin.client_kill_filter(_id=str(conn["id"]))
        taken += fill(full_server.port, admin, 6)
        down = daemon.wait_for_event("redis.disconnected", 10)[0]
        assert "max number of clients" in down["error"]
    finally:
        for raw in taken:
            raw.close()
    daemon.wait_for_event("task.done", 10)
    assert not daemon.events("task.ack_uncertain")
    starts = [body for _, phase, body in taskd.records() if phase == "start"]
    assert starts == ["slow:2:once"]
    assert admin.llen("jobs") == 0 and admin.llen(QueueKeys("jobs").processing("w1")) == 0
    assert daemon.proc.poll() is None


def test_unix_socket_connections_record_what_was_sent(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", None, "--unixsocket", str(sock))
    server.workdir.mkdir()
    server.start()
    try:
        client = make_client(settings(f"unix://{sock}?db=1"))
        client.lpush("q", "x")
        assert server.client(db=1).llen("q") == 1
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            exc = raised(lambda: client.lpush("q", "y"))
            assert getattr(exc, SENT) is True and maybe_applied(exc)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
    finally:
        server.stop()
    missing = make_client(settings(f"unix://{tmp_path / 'nothing.sock'}"))
    exc = raised(lambda: missing.lpush("q", "z"))
    assert getattr(exc, SENT) is False and not maybe_applied(exc)


def test_a_script_command_the_acl_forbids_is_refused_and_named(redis_server: RedisServer) -> None:
    redis_server.client().acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["*"], commands=["+eval", "+ping"]
    )
    url = f"redis://limited:pw@127.0.0.1:{redis_server.port}/0"
    client = make_client(settings(url))
    exc = raised(lambda: client.eval("return redis.call('GET', KEYS[1])", 1, "k"))
    assert getattr(exc, REFUSED) is True and not maybe_applied(exc) and not is_transient(exc)
    line = fatal_reason(exc, url)
    assert "ACL user" in line and "pw@" not in line
