"""`taskd enqueue` pushes what it is given, byte for byte, and says where it stopped."""

from __future__ import annotations

import os

from conftest import DaemonFactory, RedisServer
from daemon.keys import DEFAULT_QUEUE

Q = DEFAULT_QUEUE


def in_consumption_order(server: RedisServer) -> list[bytes]:
    """The queue as consumers will take it (they pop from the right)."""
    return list(reversed(server.client().lrange(Q, 0, -1)))


def test_stdin_lines_that_are_not_utf8_are_pushed_byte_exact_and_counted(
    taskd: DaemonFactory, redis_server: RedisServer
) -> None:
    lines = [b"caf\xe9 latin-1", b"\xff\xfe\x00\x01 binary", "张三 utf-8".encode(), b"\x80"]
    given = b"\n".join([lines[0], lines[1], b"", lines[2] + b"\r", lines[3]])  # CRLF, no final LF
    done = taskd.run("enqueue", "--redis-url", redis_server.url, "-", input=given)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == f"enqueued 4 task(s) on {Q}"
    assert in_consumption_order(redis_server) == lines


def test_arguments_that_are_not_utf8_are_pushed_as_the_bytes_given(
    taskd: DaemonFactory, redis_server: RedisServer
) -> None:
    raw = [b"\xe9t\xe9", b"plain"]
    done = taskd.run("enqueue", "--redis-url", redis_server.url, *map(os.fsdecode, raw))
    assert done.returncode == 0, done.stderr
    assert in_consumption_order(redis_server) == raw


def test_push_refused_mid_way_names_the_line_and_how_many_were_pushed(
    taskd: DaemonFactory, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    used = int(client.info("memory")["used_memory"])
    # room for one batch (~1 MB) in its query buffer, not for a second one after it
    client.config_set("maxmemory", used + 1_500_000)
    client.config_set("maxmemory-policy", "noeviction")
    lines = [b""] + [b"\xfe%06d" % i + b"x" * 1000 for i in range(2500)]  # line 1 is empty
    done = taskd.run("enqueue", "--redis-url", redis_server.url, "-", input=b"\n".join(lines))
    assert done.returncode == 69
    (message,) = done.stderr.decode().splitlines()
    assert message.startswith("taskd enqueue: error: stopped at line 1002: redis refused")
    assert "maxmemory" in message
    assert message.endswith(f"pushed 1000 task(s) onto {Q} before it")
    client.config_set("maxmemory", 0)
    assert in_consumption_order(redis_server) == lines[1:1001]
