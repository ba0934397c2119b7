"""The subscriber's contract: no silent hang on a dead subscription, back within the backoff cap,
every unsubscribed second said and counted, and nothing lost on the durable path.

Each fault test runs a real `taskd subscribe` against a real redis-server, injects the fault
(black hole, restart, CLIENT KILL, output-buffer disconnect, kill -9) and publishes until a
message is handled again, measuring how long that took.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import Daemon, DaemonFactory, RedisServer, free_port, stays_true, wait_until
from daemon.config import Settings
from daemon.connection import make_client
from daemon.subscriber import PingDeadline, SubscriptionSilent, _PubSub
from tools.chaos_proxy import ChaosProxy

HANDLER = ("--handler", "handlers_for_tests:record")
C = "news"
# Short test timings; the contract scales with them: a dead subscription is noticed within
# 2 x ping interval (+ one poll), messages flow again within backoff cap + 2 s.
PING, CAP = 0.5, 0.5
FAST = (
    "--ping-interval",
    str(PING),
    "--block-timeout",
    "1",
    "--socket-timeout",
    "2",
    "--backoff-cap",
    str(CAP),
    "--backoff-base",
    "0.05",
    "--connect-timeout",
    "1",
    "--stall-timeout",
    "30",
)


def subscribe(taskd: DaemonFactory, url: str, *args: str) -> Daemon:
    """`taskd subscribe` with the short test timings."""
    return taskd.start("subscribe", "--redis-url", url, *HANDLER, *FAST, *args)


def publish_until_handled(
    taskd: DaemonFactory,
    client: redis.Redis,
    prefix: str,
    timeout: float,
    channel: str = C,
) -> float:
    """Publish `<prefix><n>` every 50 ms until one is handled; returns the seconds it took."""
    started = time.monotonic()
    numbers = itertools.count()

    def handled() -> bool:
        with contextlib.suppress(redis.RedisError):  # a fault may hit this client too
            client.publish(channel, f"{prefix}{next(numbers)}")
        return any(body.startswith(prefix) for body in taskd.done_bodies())

    wait_until(handled, timeout, f"a message {prefix}* handled")
    return time.monotonic() - started


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        return str(answer.read().decode())


def sample(page: str, name: str, channel: str) -> float:
    match = re.search(rf'^{name}{{channel="{re.escape(channel)}"}} (\S+)$', page, re.MULTILINE)
    assert match, f"{name}{{channel={channel!r}}} not exported"
    return float(match.group(1))


def logged_at(line: dict[str, Any]) -> float:
    """The Unix time of a JSON log line."""
    return datetime.fromisoformat(line["timestamp"]).timestamp()


# -- the PING deadline, pure -----------------------------------------------------------------


def test_ping_deadline_pings_every_interval_and_fails_after_twice_that_silent() -> None:
    deadline = PingDeadline(interval=5.0, now=100.0)
    assert not deadline.ping_due(104.9)
    assert deadline.ping_due(105.0)
    deadline.pinged(105.0)
    assert deadline.silence(110.0) is None  # 10 s silent: not yet past 2 x 5 s
    error = deadline.silence(110.1)
    assert isinstance(error, SubscriptionSilent) and isinstance(error, redis.ConnectionError)
    assert error.silent_since == 100.0
    deadline.heard(110.0)  # a PONG or message resets the deadline
    assert deadline.silence(119.9) is None


def test_ping_deadline_does_not_count_time_spent_in_the_handler() -> None:
    deadline = PingDeadline(interval=1.0, now=0.0)
    deadline.heard(0.5)
    deadline.listening_again(30.0)  # a 29.5 s handler run: nothing was read meanwhile
    assert deadline.silence(31.0) is None
    assert deadline.ping_due(30.0)  # but a PING is due at once
    assert deadline.silence(32.1) is not None
    assert deadline.last_heard == 0.5  # what the unsubscribed time is counted from


def test_pubsub_connection_is_not_reconnected_behind_the_loops_back(
    redis_server: RedisServer,
) -> None:
    """redis-py reconnects (and re-subscribes) inside a failed pubsub call; ours must not."""
    settings = Settings(redis_url=redis_server.url, worker_id="t")
    client = make_client(settings, client_name="taskd-sub:t")
    pubsub = _PubSub(client.connection_pool)
    pubsub.subscribe(C)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    admin = redis_server.client()
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    with pytest.raises(redis.ConnectionError):
        pubsub.get_message(timeout=2)
    assert admin.pubsub_numsub(C) == [(C.encode(), 0)]  # not silently subscribed again
    pubsub.close()
    client.close()


# -- messages ---------------------------------------------------------------------------------


def test_messages_on_a_channel_and_on_a_pattern_reach_the_handler(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C, "--pattern", "alerts.*")
    confirmed = daemon.wait_for_event("pubsub.subscribed", 10)[0]
    assert confirmed["channels"] == [C] and confirmed["patterns"] == ["alerts.*"]
    client = redis_server.client()
    assert client.publish(C, "plain") == 1
    assert client.publish("alerts.disk", "matched") == 1
    assert client.publish("elsewhere", "ignored") == 0
    wait_until(lambda: sorted(taskd.done_bodies()) == ["matched", "plain"], 5, "both handled")
    done = {line["channel"]: line for line in daemon.wait_for_event("message.done", 5, count=2)}
    assert done[C].get("pattern") is None
    assert done["alerts.disk"]["pattern"] == "alerts.*"
    assert all(line["logger"] == "taskd.subscriber" for line in done.values())


def test_failing_handler_is_logged_and_counted_and_the_loop_goes_on(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    port = free_port()
    daemon = subscribe(taskd, redis_server.url, "--channel", C, "--metrics-port", str(port))
    daemon.wait_for_event("pubsub.subscribed", 10)
    client = redis_server.client()
    client.publish(C, "fail:boom")
    client.publish(C, "after")
    wait_until(lambda: taskd.done_bodies() == ["after"], 5, "the message after the failure")
    failed = daemon.wait_for_event("message.failed", 5)[0]
    assert "asked to fail: fail:boom" in failed["error"] and failed["channel"] == C
    page = scrape(port)
    assert sample(page, "taskd_pubsub_failures_total", C) == 1
    assert sample(page, "taskd_pubsub_messages_total", C) == 2  # received, failed or not
    assert daemon.proc.poll() is None


def test_handler_running_past_the_ping_deadline_is_not_a_dead_connection(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C)
    daemon.wait_for_event("pubsub.subscribed", 10)
    client = redis_server.client()
    client.publish(C, f"slow:{4 * PING}:long")
    client.publish(C, "next")
    wait_until(lambda: len(taskd.done_bodies()) == 2, 4 * PING + 3, "both handled")
    stays_true(lambda: not daemon.events("redis.disconnected"), PING, "no disconnect")
    assert not daemon.events("redis.disconnected")


# -- faults -----------------------------------------------------------------------------------


def test_blackholed_subscription_is_detected_by_the_ping_deadline_and_recovered(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """A half-open flow: no FIN, no RST, writes still succeed. Only the PING deadline sees it."""
    client = redis_server.client()
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        daemon = subscribe(taskd, f"redis://127.0.0.1:{proxy.port}/0", "--channel", C)
        daemon.wait_for_event("pubsub.subscribed", 10)
        publish_until_handled(taskd, client, "before", 5)
        proxy.set_mode("blackhole")
        holed, holed_wall = time.monotonic(), time.time()
        lines = daemon.wait_for_event("redis.disconnected", 2 * PING + 1.0 + 1)
        detected = time.monotonic() - holed
        assert detected <= 2 * PING + 1.0, f"noticed after {detected:.2f} s"
        assert "no PONG" in lines[0]["error"]
        # the black hole lasts 2 s more: reconnect attempts meanwhile are black-holed too
        stays_true(lambda: daemon.proc.poll() is None, 2, "the subscriber under the black hole")
        proxy.set_mode("pass")
        took = publish_until_handled(taskd, client, "after", CAP + 2 + 2)
        assert took <= CAP + 2, f"flowing again after {took:.2f} s"
        assert len(daemon.events("redis.disconnected")) == 1  # once, not once per attempt
        assert daemon.events("redis.reconnected")
        resubscribed = daemon.wait_for_event("pubsub.resubscribed", 1)[0]
        # the lost window starts at the last sign of life, not when the silence was noticed
        # (that would be ~2 x PING short); 0.01 s: the count is rounded to ms and the line's
        # timestamp is taken after the count, on another clock
        assert resubscribed["unsubscribed_seconds"] >= logged_at(resubscribed) - holed_wall - 0.01
        assert daemon.proc.poll() is None


def test_redis_restart_resubscribes_and_counts_the_unsubscribed_seconds(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    port = free_port()
    daemon = subscribe(
        taskd, redis_server.url, "--channel", C, "--pattern", "p.*", "--metrics-port", str(port)
    )
    daemon.wait_for_event("pubsub.subscribed", 10)
    publish_until_handled(taskd, redis_server.client(), "before", 5)
    redis_server.stop()
    down = time.monotonic()
    daemon.wait_for_event("redis.disconnected", 2 * PING + 1.0)
    stays_true(lambda: daemon.proc.poll() is None, 1.0, "the subscriber during the outage")
    restarted = time.monotonic()
    redis_server.start()
    down_for = restarted - down
    resubscribed = daemon.wait_for_event("pubsub.resubscribed", CAP + 2)[0]
    assert resubscribed["unsubscribed_seconds"] >= down_for > 0
    assert resubscribed["channels"] == [C] and resubscribed["patterns"] == ["p.*"]
    assert daemon.events("redis.reconnected")[0]["outage_seconds"] > 0
    client = redis_server.client()
    publish_until_handled(taskd, client, "after", 3)
    publish_until_handled(taskd, client, "pattern-after", 3, channel="p.x")
    page = scrape(port)
    for name in (C, "p.*"):  # every subscription was lost for the same time
        counted = sample(page, "taskd_pubsub_unsubscribed_seconds_total", name)
        assert counted == pytest.approx(resubscribed["unsubscribed_seconds"], abs=0.01)
    assert len(daemon.events("redis.disconnected")) == 1


def test_redis_down_at_start_is_waited_out_not_an_exit(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = RedisServer(tmp_path / "late")
    server.workdir.mkdir()
    daemon = subscribe(taskd, server.url, "--channel", C)
    first = daemon.wait_for_event("redis.disconnected", 5)[0]
    assert first["first_contact"] is True
    stays_true(  # several attempts, one log line, no exit
        lambda: daemon.proc.poll() is None and len(daemon.events("redis.disconnected")) == 1,
        1.0,
        "one disconnect line and no exit while Redis is down",
    )
    assert daemon.proc.poll() is None and len(daemon.events("redis.disconnected")) == 1
    server.start()
    try:
        daemon.wait_for_event("pubsub.subscribed", CAP + 2)
        publish_until_handled(taskd, server.client(), "first", 3)
        assert not daemon.events("pubsub.resubscribed")  # never subscribed before: no gap
    finally:
        server.stop()


def test_client_kill_of_the_pubsub_connection_reconnects(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C)
    daemon.wait_for_event("pubsub.subscribed", 10)
    admin = redis_server.client()
    publish_until_handled(taskd, admin, "before", 5)
    assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
    daemon.wait_for_event("pubsub.resubscribed", CAP + 2)
    publish_until_handled(taskd, admin, "after", CAP + 2)
    names = [c["name"] for c in admin.client_list(_type="pubsub")]
    assert len(names) == 1 and names[0].startswith("taskd-sub:")  # the old one is not kept


def test_output_buffer_disconnect_of_a_slow_subscriber_reconnects(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    """A flood the slow handler cannot keep up with: Redis drops the subscriber (by design)."""
    server = RedisServer(
        tmp_path / "obuf", None, "--client-output-buffer-limit", "pubsub 64kb 32kb 1"
    )
    server.workdir.mkdir()
    server.start()
    try:
        daemon = subscribe(taskd, server.url, "--channel", C)
        daemon.wait_for_event("pubsub.subscribed", 10)
        client = server.client()
        padding = "x" * 32 * 1024
        flood = [f"slow:0.2:flood{i}:{padding}" for i in range(300)]  # ~10 MB
        for body in flood:
            client.publish(C, body)
        redis_log = (server.workdir / "redis.log").read_text()
        assert "closed ASAP for overcoming of output buffer limits" in redis_log
        daemon.wait_for_event("redis.disconnected", 60)
        daemon.wait_for_event("pubsub.resubscribed", 60)
        took = publish_until_handled(taskd, client, "after", 10)
        assert took <= CAP + 2
        handled = [b for b in taskd.done_bodies() if b.startswith("slow:")]
        assert 0 < len(handled) < len(flood)  # the rest was dropped with the connection
        assert daemon.proc.poll() is None
    finally:
        server.stop()


# -- the durable path ---------------------------------------------------------------------------


def durable(taskd: DaemonFactory, url: str, *args: str) -> Daemon:
    return taskd.start(
        "subscribe", "--redis-url", url, "--durable", "--channel", C, *HANDLER, *FAST, *args
    )


def test_durable_messages_published_while_no_subscriber_runs_are_handled(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    published = taskd.run(
        "publish", "--redis-url", redis_server.url, "--durable", "--channel", C, "m1", "m2", "m3"
    )
    assert published.returncode == 0, published.stderr
    assert b"no subscriber was listening" in published.stderr
    daemon = durable(taskd, redis_server.url, "--worker-id", "w1")
    wait_until(lambda: taskd.done_bodies() == ["m1", "m2", "m3"], 10, "m1..m3 in order")
    started = daemon.wait_for_event("subscriber.started", 1)[0]
    assert started["durable"] is True and started["queues"] == [f"{C}:durable"]
    client = redis_server.client()
    wait_until(lambda: client.llen(f"{C}:processing:w1") == 0, 5, "nothing held")
    assert client.llen(f"{C}:durable") == 0
    assert not daemon.events("pubsub.subscribed")  # it does not listen on the channel


def test_durable_subscriber_killed_mid_message_loses_nothing(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    url = redis_server.url
    first = durable(taskd, url, "--worker-id", "w1")
    first.wait_for_event("consumer.started", 10)
    published = taskd.run(
        "publish", "--redis-url", url, "--durable", "--channel", C, "slow:2:held", "next"
    )
    assert published.returncode == 0, published.stderr
    wait_until(lambda: ("start", "slow:2:held") in [r[1:] for r in taskd.records()], 10, "start")
    first.proc.kill()  # kill -9 in the middle of the handler
    first.wait(5)
    assert taskd.done_bodies() == []
    client = redis_server.client()
    assert client.lrange(f"{C}:durable:processing:w1", 0, -1) == [b"slow:2:held"]
    second = durable(taskd, url, "--worker-id", "w1")
    wait_until(lambda: sorted(taskd.done_bodies()) == ["next", "slow:2:held"], 10, "both done")
    assert second.events("recovery.own_tasks")[0]["returned"] == 1
    wait_until(lambda: client.llen(f"{C}:durable:processing:w1") == 0, 5, "nothing held")


# -- stopping and configuration ---------------------------------------------------------------


def test_sigterm_finishes_the_current_message_then_exits_0(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C)
    daemon.wait_for_event("pubsub.subscribed", 10)
    redis_server.client().publish(C, "slow:1:last")
    wait_until(lambda: taskd.records(), 5, "the handler to start")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 0
    assert taskd.done_bodies() == ["slow:1:last"]
    assert daemon.events("subscriber.stopping")[0]["signal"] == signal.SIGTERM
    assert daemon.events("subscriber.stopped")[0]["exit_code"] == 0


def test_idle_subscriber_keeps_its_connection_and_stops_within_a_poll(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C)
    daemon.wait_for_event("pubsub.subscribed", 10)
    # quiet, but the PONGs keep it alive
    stays_true(lambda: not daemon.events("redis.disconnected"), 4 * PING, "an idle connection")
    assert not daemon.events("redis.disconnected")
    asked = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert daemon.wait(5) == 0
    assert time.monotonic() - asked < 2
    assert daemon.events("subscriber.stopped")


def test_handler_outliving_the_drain_timeout_exits_75(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    daemon = subscribe(taskd, redis_server.url, "--channel", C, "--drain-timeout", "0.5")
    daemon.wait_for_event("pubsub.subscribed", 10)
    redis_server.client().publish(C, "slow:30:stuck")
    wait_until(lambda: taskd.records(), 5, "the handler to start")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 75
    assert daemon.events("subscriber.drain_timeout")


def test_durable_with_a_pattern_is_a_config_error_in_one_line(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    result = taskd.run(
        "subscribe", "--redis-url", redis_server.url, "--durable", "--pattern", "x", *HANDLER
    )
    assert result.returncode == 78
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "patterns cannot be durable" in lines[0], lines


def test_channel_the_acl_forbids_is_fatal_with_exit_78(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    admin = redis_server.client()
    admin.acl_setuser(
        "sub",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["allowed*"],
        commands=["+@all"],
    )
    url = f"redis://sub:pw@127.0.0.1:{redis_server.port}/0"
    daemon = subscribe(taskd, url, "--channel", "forbidden")
    assert daemon.wait(10) == 78
    output = daemon.log_path.read_text().strip().splitlines()
    assert "no permissions to access one of the channels" in output[-1]
    assert output[-1].startswith("taskd subscribe: error:") and ":pw@" not in output[-1]
    assert not any("Traceback" in line for line in output)
