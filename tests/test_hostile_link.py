"""The link state tells "Redis is away" from "Redis answers but refuses" (READONLY, LOADING...)."""

from __future__ import annotations

import redis
import structlog
from redis.backoff import NoBackoff

from daemon.faults import LinkState
from daemon.probes import readiness
from daemon.redis_errors import refusal_reason


def _link() -> LinkState:
    return LinkState(NoBackoff(), structlog.get_logger("test"))


def test_error_replies_that_waiting_cures_are_refusals_and_network_errors_are_not() -> None:
    assert refusal_reason(redis.ReadOnlyError("READONLY You can't write")) == (
        "a read-only replica (READONLY)"
    )
    assert "LOADING" in refusal_reason(redis.exceptions.BusyLoadingError("LOADING ..."))
    assert "BUSY" in refusal_reason(redis.ResponseError("BUSY Redis is busy running a script"))
    assert refusal_reason(redis.ConnectionError("Connection refused")) == ""
    assert refusal_reason(redis.exceptions.OutOfMemoryError("OOM command not allowed")) == ""
    assert refusal_reason(redis.ResponseError("WRONGTYPE Operation")) == ""  # fatal, not this


def test_readyz_says_redis_answers_but_refuses_while_a_replica_rejects_writes() -> None:
    link = _link()
    link.succeeded()
    link.failed(redis.ReadOnlyError("READONLY You can't write against a read only replica."))
    status, body = readiness(link)
    assert status == 503 and body["redis"] == "connected"
    assert body["refusing"] == "a read-only replica (READONLY)"
    link.failed(redis.ConnectionError("Connection refused"))  # now it is really away
    status, body = readiness(link)
    assert status == 503 and body["redis"] == "down" and "refusing" not in body
    link.succeeded()
    assert readiness(link) == (200, {"state": "ready", "redis": "connected"})
    assert link.rejecting == "" and link.rejecting_since is None


def test_out_of_memory_is_not_reported_once_redis_is_away() -> None:
    link = _link()
    link.succeeded()
    link.refusing = "out of memory (maxmemory reached)"
    assert readiness(link)[1]["refusing"] == "out of memory (maxmemory reached)"
    link.failed(redis.ConnectionError("Connection refused"))  # Redis killed while full
    status, body = readiness(link)
    assert status == 503 and body["redis"] == "down" and "refusing" not in body


def test_readyz_is_503_while_the_loop_waits_for_its_worker_id() -> None:
    link = _link()
    link.succeeded()
    waiting = "waiting for worker id w1 of queue q, held by host h2 pid 7 since 12:00"
    status, body = readiness(link, waiting)
    assert status == 503 and body["redis"] == "connected" and body["waiting"] == waiting
    assert readiness(link, "")[0] == 200
