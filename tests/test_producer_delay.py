"""Delayed tasks from the producer side: `taskd enqueue --delay`, `enqueue(..., delay=)` and
the web API's "delay" put the task into Q:delayed, due on Redis's clock; a real consumer's
promote step runs it once due, not before.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import ROOT, TESTS, DaemonFactory, RedisServer, wait_until
from daemon import config
from daemon.keys import DEFAULT_QUEUE, QueueKeys
from daemon.producer import (
    MAX_DELAY,
    ReplicasNotConfirmed,
    enqueue,
    enqueue_delayed,
    enqueue_many,
    parse_delay,
)
from daemon.reliable import TOKEN_CHARS
from daemon.web import create_app

Q = DEFAULT_QUEUE
DELAYED = QueueKeys(Q).delayed
# A task due at T runs by T + one promote period (1 s) + one idle claim (--block-timeout 0.5)
# + the handler start: this much slack is generous on a loaded 2-core machine.
LATE_SLACK = 3.0


def redis_now(server: RedisServer) -> float:
    seconds, micros = server.client().time()
    return float(seconds) + micros / 1e6


def delayed_members(server: RedisServer) -> list[tuple[bytes, float]]:
    return [(m, float(s)) for m, s in server.client().zrange(DELAYED, 0, -1, withscores=True)]


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30", 30.0),
        ("1.5", 1.5),
        (" 2S ", 2.0),
        ("0", 0.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_durations_are_read_as_seconds(given: Any, seconds: float) -> None:
    assert parse_delay(given) == seconds


@pytest.mark.parametrize(
    "given",
    ["-1", "-1s", "abc", "5x", "", "1d", "s", "1 h", -0.5, math.nan, math.inf, True, None, [1]],
)
def test_bad_durations_raise_value_error_naming_them(given: Any) -> None:
    with pytest.raises(ValueError, match="expected a duration >= 0"):
        parse_delay(given)
    with pytest.raises(ValueError):
        parse_delay(f"{MAX_DELAY + 1:.0f}")


def test_api_delay_schedules_on_redis_clock(redis_server: RedisServer) -> None:
    client = redis_server.client()
    before = redis_now(redis_server)
    assert enqueue(client, Q, b"report", delay=30.0) == 1
    assert enqueue(client, Q, b"report", delay="30s") == 2  # identical bodies stay two tasks
    after = redis_now(redis_server)
    assert client.llen(Q) == 0
    members = delayed_members(redis_server)
    assert [m[TOKEN_CHARS:] for m, _ in members] == [b"report", b"report"]
    assert all(before + 30 <= score <= after + 30 for _, score in members)
    scheduled = enqueue_delayed(client, Q, "txt", "5m")
    assert scheduled.delayed == 3 and scheduled.delay == 300.0
    assert client.zscore(DELAYED, [m for m, _ in delayed_members(redis_server)][-1]) == (
        pytest.approx(scheduled.due_at, abs=1e-3)
    )
    assert enqueue_many(client, Q, [b"a", b"b"], delay=60) == 2
    assert client.zcard(DELAYED) == 5
    assert enqueue(client, Q, b"now", delay=0) == 1  # no delay: pushed at once
    assert client.lrange(Q, 0, -1) == [b"now"]


@pytest.mark.parametrize("bad", [-1.0, "-1s", "soon", math.nan])
def test_api_bad_delay_raises_before_sending(redis_server: RedisServer, bad: Any) -> None:
    client = redis_server.client()
    for push in (
        lambda: enqueue(client, Q, b"x", delay=bad),
        lambda: enqueue_delayed(client, Q, b"x", bad),
        lambda: enqueue_many(client, Q, [b"x"], delay=bad),
    ):
        with pytest.raises(ValueError, match="delay"):
            push()
    assert client.llen(Q) == 0 and client.zcard(DELAYED) == 0


def test_api_delay_waits_for_replicas(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with pytest.raises(ReplicasNotConfirmed) as caught:  # no replica: WAIT confirms 0
        enqueue(client, Q, b"x", wait_replicas=1, wait_timeout=0.2, delay="1m")
    assert caught.value.confirmed == 0
    assert [m[TOKEN_CHARS:] for m, _ in delayed_members(redis_server)] == [b"x"]


@pytest.mark.parametrize(
    "flag", [["--delay=-5s"], ["--delay", "-5"], ["--delay=abc"], ["--delay", "2d"]]
)
def test_cli_bad_delay_is_exit_78_with_one_line(
    taskd: DaemonFactory, redis_server: RedisServer, flag: list[str]
) -> None:
    done = taskd.run("enqueue", "--redis-url", redis_server.url, *flag, "x")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 78, lines
    assert len(lines) == 1 and "--delay" in lines[0], lines
    assert redis_server.client().zcard(DELAYED) == 0 and redis_server.client().llen(Q) == 0


def test_consumer_runs_a_delayed_task_when_due_not_before(
    taskd: DaemonFactory, redis_server: RedisServer
) -> None:
    consumer = taskd.consume(
        redis_server.url, "--handler", "handlers_for_tests:stamp", "--block-timeout", "0.5"
    )
    consumer.wait_for_event("consumer.started", 15)
    # The producer's wall clock is 2 h ahead of Redis's: the due time must not depend on it.
    env = taskd.env(
        PYTHONPATH=os.pathsep.join([str(TESTS / "producer_skew_clock"), str(TESTS), str(ROOT)]),
        PRODUCER_TEST_WALL_OFFSET="7200",
    )
    before = redis_now(redis_server)
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", "--redis-url", redis_server.url]
        + ["--delay", "2s", "later"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert b"scheduled 1 task(s)" in done.stdout
    enqueue(redis_server.client(), Q, b"now")
    times = taskd.record.with_name(taskd.record.name + ".times")

    def ran() -> dict[str, float]:
        stamps = (line.split(" ", 1) for line in times.read_text().splitlines())
        return {body: float(at) for at, body in stamps}

    stamps = wait_until(lambda: "later" in ran() and ran(), 2 + LATE_SLACK + 10, "the task")
    assert stamps["now"] < stamps["later"]  # the consumer was serving meanwhile
    assert before + 2.0 <= stamps["later"] <= before + 2.0 + LATE_SLACK, stamps["later"] - before
    assert redis_server.client().zcard(DELAYED) == 0


@pytest.mark.parametrize("bad", ["-1s", -3, True, "soon", [], {}])
def test_web_bad_delay_is_400_with_a_reason(redis_server: RedisServer, bad: Any) -> None:
    web = create_app(config.load({"redis_url": redis_server.url}, env={})).test_client()
    answer = web.post("/api/tasks", json={"queue": Q, "body": "x", "delay": bad})
    assert answer.status_code == 400
    assert "delay" in answer.get_json()["error"]
    assert redis_server.client().zcard(DELAYED) == 0 and redis_server.client().llen(Q) == 0


def test_web_delay_schedules_the_task(redis_server: RedisServer) -> None:
    web = create_app(config.load({"redis_url": redis_server.url}, env={})).test_client()
    before = redis_now(redis_server)
    answer = web.post("/api/tasks", json={"queue": Q, "body": "x", "delay": "1m"})
    assert answer.status_code == 202
    doc = answer.get_json()
    assert doc["queue"] == Q and doc["delay"] == 60.0 and doc["delayed"] == 1
    assert before + 60 <= doc["due_at"] <= redis_now(redis_server) + 60
    answer = web.post("/api/tasks", json={"queue": Q, "body": "y", "delay": 2.5})
    assert answer.status_code == 202 and answer.get_json()["delay"] == 2.5
    assert [m[TOKEN_CHARS:] for m, _ in delayed_members(redis_server)] == [b"y", b"x"]  # by due
    plain = web.post("/api/tasks", json={"queue": Q, "body": "z", "delay": None})
    assert plain.get_json() == {"queue": Q, "depth": 1}
