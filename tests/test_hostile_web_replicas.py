"""Producers that wait for replicas (Redis WAIT): a real replica, then the same replica frozen.

A push Redis acknowledged is lost if the master dies before a replica has it. With
--wait-replicas the producer learns whether the replicas confirmed it, within --wait-timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_harness import request_json, start_taskd_web

from conftest import DaemonFactory, RedisServer, wait_until
from daemon.keys import DEFAULT_CHANNEL, DEFAULT_QUEUE, durable_queue
from daemon.producer import ReplicasNotConfirmed, enqueue, enqueue_many, publish

Q = DEFAULT_QUEUE
WAIT = ("--wait-replicas", "1", "--wait-timeout", "0.5")


class Replica:
    """A replica of the test's master that can be frozen (SIGSTOP) and thawed."""

    def __init__(self, master: RedisServer, workdir: Path) -> None:
        workdir.mkdir()
        self.master = master
        self.server = RedisServer(workdir, None, "--replicaof", "127.0.0.1", str(master.port))
        self.server.start()
        wait_until(self.in_sync, 20, "the replica in sync with its master")

    def in_sync(self) -> bool:
        info = self.master.client().info("replication")
        slave = info.get("slave0")
        return bool(info["connected_slaves"] == 1 and slave and slave["state"] == "online")

    def freeze(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGCONT)


@pytest.fixture
def replica(redis_server: RedisServer, tmp_path: Path) -> Iterator[Replica]:
    replica = Replica(redis_server, tmp_path / "replica")
    yield replica
    replica.thaw()
    replica.server.stop()


def test_enqueue_cli_succeeds_with_a_live_replica_and_exits_69_when_it_is_frozen(
    taskd: DaemonFactory, redis_server: RedisServer, replica: Replica
) -> None:
    confirmed = taskd.run("enqueue", "--redis-url", redis_server.url, *WAIT, "a", "b")
    assert confirmed.returncode == 0, confirmed.stderr
    assert b"enqueued 2 task(s)" in confirmed.stdout
    assert replica.server.client().llen(Q) == 2

    replica.freeze()
    started = time.monotonic()
    refused = taskd.run("enqueue", "--redis-url", redis_server.url, *WAIT, "c")
    elapsed = time.monotonic() - started
    assert refused.returncode == 69
    (line,) = refused.stderr.decode().splitlines()
    assert "pushed 1 task(s)" in line
    assert "replication not confirmed: 0 of 1 replica(s)" in line
    assert elapsed < 0.5 + 3  # the wait timeout plus a Python start-up, never a hang
    assert redis_server.client().llen(Q) == 3  # on the master, unconfirmed


def test_python_api_raises_replicas_not_confirmed_naming_the_counts(
    redis_server: RedisServer, replica: Replica
) -> None:
    client = redis_server.client()
    assert enqueue(client, Q, b"one", wait_replicas=1, wait_timeout=1.0) == 1
    assert enqueue_many(client, Q, [b"two", b"three"], wait_replicas=1, wait_timeout=1.0) == 2
    assert publish(client, DEFAULT_CHANNEL, b"m", durable=True, wait_replicas=1) == 0
    assert replica.server.client().llen(durable_queue(DEFAULT_CHANNEL)) == 1

    replica.freeze()
    started = time.monotonic()
    with pytest.raises(ReplicasNotConfirmed) as caught:
        enqueue(client, Q, b"four", wait_replicas=1, wait_timeout=0.3)
    assert time.monotonic() - started < 0.3 + 1
    assert (caught.value.confirmed, caught.value.wanted) == (0, 1)
    with pytest.raises(ReplicasNotConfirmed):
        publish(client, DEFAULT_CHANNEL, b"m2", durable=True, wait_replicas=1, wait_timeout=0.3)
    with pytest.raises(ReplicasNotConfirmed):
        enqueue(client, Q, b"five", wait_replicas=2, wait_timeout=0.3)  # more than exist


def test_web_answers_503_json_when_replicas_do_not_confirm(
    taskd: DaemonFactory, redis_server: RedisServer, replica: Replica
) -> None:
    port = start_taskd_web(taskd, redis_server.url, *WAIT)[1]

    def post() -> tuple[int, dict[str, object]]:
        return request_json(
            f"http://127.0.0.1:{port}/api/tasks", {"queue": Q, "body": "pay invoice 7"}
        )

    assert post() == (202, {"queue": Q, "depth": 1})
    replica.freeze()
    started = time.monotonic()
    status, doc = post()
    assert time.monotonic() - started < 0.5 + 1.5
    assert status == 503
    assert doc["error"] == "replication not confirmed"
    assert (doc["confirmed"], doc["wanted"], doc["stored_on_master"]) == (0, 1, True)
