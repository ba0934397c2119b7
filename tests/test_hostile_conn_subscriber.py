"""An idle, healthy subscription is "work done" for /healthz; an outage is not.

/healthz fails when Redis answers but no work got done within --stall-timeout. For a
subscriber, a poll that found no message on a live subscription is the "nothing to do" of a
consumer's empty claim, and each handled message is work; retries during an outage are not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from conftest import DaemonFactory, RedisServer, free_port, stays_true, wait_until

HANDLER = ("--handler", "handlers_for_tests:record")
STALL = 3.0
FAST = (
    "--ping-interval",
    "0.5",
    "--block-timeout",
    "0.5",
    "--socket-timeout",
    "1",
    "--backoff-cap",
    "0.2",
    "--connect-timeout",
    "0.5",
    "--stall-timeout",
    str(STALL),
)


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


def test_idle_subscriber_stays_healthy_past_the_stall_timeout(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    port = free_port()
    daemon = taskd.start(
        "subscribe",
        "--redis-url",
        redis_server.url,
        "--channel",
        "news",
        "--metrics-port",
        str(port),
        *HANDLER,
        *FAST,
    )
    daemon.wait_for_event("pubsub.subscribed", 10)
    answers = []

    def answer() -> bool:
        answers.append(healthz(port))
        return True  # every answer is judged below

    # two stall timeouts of a quiet channel: every answer must be 200 with recent work
    stays_true(answer, 2 * STALL, "/healthz answering", interval=0.25)
    bad = [body for status, body in answers if status != 200]
    assert not bad, bad
    assert max(float(str(body["seconds_since_work"])) for _, body in answers) < STALL / 2
    redis_server.client().publish("news", "hello")
    wait_until(lambda: "hello" in taskd.done_bodies(), 5, "the message handled")
    assert healthz(port)[0] == 200


def test_retries_of_an_outage_are_not_work(tmp_path: Path, taskd: DaemonFactory) -> None:
    server = RedisServer(tmp_path / "gone")
    server.workdir.mkdir()
    server.start()
    port = free_port()
    daemon = taskd.start(
        "subscribe",
        "--redis-url",
        server.url,
        "--channel",
        "news",
        "--metrics-port",
        str(port),
        *HANDLER,
        *FAST,
    )
    daemon.wait_for_event("pubsub.subscribed", 10)
    server.stop()
    daemon.wait_for_event("redis.disconnected", 5)
    # the work clock stops while only retries happen (the outage is /readyz's business)
    first = float(str(healthz(port)[1]["seconds_since_work"]))
    wait_until(
        lambda: float(str(healthz(port)[1]["seconds_since_work"])) > first + 1.0,
        5,
        "the work clock to keep running during the outage",
    )
