"""The harness the other tests stand on keeps its own promises (tools/harness)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import redis

from tools.harness import (
    RedisServer,
    RedisStartError,
    StoppedHolding,
    WaitTimeout,
    make_full,
    poll_until,
    stays_true,
    wait_until,
)


def test_wait_until_returns_the_first_truthy_value_and_names_what_timed_out() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "there", 5, "three", interval=0.001) == "there"

    def broken() -> bool:
        raise ValueError("unreadable")

    with pytest.raises(WaitTimeout, match=r"waiting for the state .*ValueError"):
        wait_until(broken, 0.05, "the state")
    assert poll_until(lambda: False, 0.05) is None


def test_stays_true_fails_at_the_first_moment_it_stops_holding() -> None:
    started = time.monotonic()
    stays_true(lambda: True, 0.2, "always")
    assert time.monotonic() - started >= 0.2
    flips = time.monotonic() + 0.1
    with pytest.raises(StoppedHolding, match="the flag stopped holding"):
        stays_true(lambda: time.monotonic() < flips, 5, "the flag")
    assert time.monotonic() - started < 1.0  # failed at once, not after the whole span


def test_an_aof_redis_killed_by_sigkill_restarts_with_every_write(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "aof", aof=True, password="pw")
    server.start()
    try:
        server.client().rpush("kept", "a", "b")
        server.kill9()
        assert server.pid is None and not server.answers()
        server.start()
        assert server.client().lrange("kept", 0, -1) == [b"a", b"b"]
        assert server.ping() and server.started_at > 0
    finally:
        server.stop()


def test_a_redis_that_cannot_start_fails_at_once_with_its_log(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "bad", None, "--no-such-option", "x")
    started = time.monotonic()
    with pytest.raises(RedisStartError, match="no-such-option"):
        server.start(timeout=10)
    assert time.monotonic() - started < 5


def test_a_frozen_redis_is_stopped_within_the_grace(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "frozen").start()
    server.freeze()
    started = time.monotonic()
    server.stop(grace=5)
    assert server.pid is None and time.monotonic() - started < 5


def test_a_full_redis_refuses_writes_and_stays_full(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "full", maxmemory="4mb", maxmemory_policy="noeviction")
    server.start()
    try:
        client = server.client()
        used, limit = make_full(client, 256 * 1024)
        assert limit == used - 256 * 1024
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", "1")
    finally:
        server.stop()
