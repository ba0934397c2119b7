"""`--pubsub classic|sharded|auto` on a single real redis-server (Redis 7 has SSUBSCRIBE there).

auto on a single node is classic, exactly as before the setting existed; sharded uses
SPUBLISH/SSUBSCRIBE; a server without them (renamed away here, as Redis < 7 lacks them) stops
sharded with one line and exit 78; sharded with --pattern is refused before connecting.
The cluster side is tests/test_cluster_pubsub.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Daemon, DaemonFactory, RedisServer, wait_until
from daemon import config, settings_rules
from daemon.config import ConfigError, Settings

HANDLER = ("--handler", "handlers_for_tests:record")
SH = ("--pubsub", "sharded")
FAST = ("--ping-interval", "0.5", "--backoff-cap", "0.5", "--backoff-base", "0.05")


def subscribe(taskd: DaemonFactory, url: str, *args: str) -> Daemon:
    return taskd.start("subscribe", "--redis-url", url, *HANDLER, *FAST, *args)


def publish_until_handled(taskd: DaemonFactory, url: str, channel: str, *args: str) -> str:
    """`taskd publish` once a subscriber is confirmed; its stdout (the message is handled)."""
    done = taskd.run("publish", "--redis-url", url, "--channel", channel, *args, "hello")
    assert done.returncode == 0, done.stderr
    assert b"no subscriber was listening" not in done.stderr, done.stderr
    wait_until(lambda: "hello" in taskd.done_bodies(), 10, "the message handled")
    return done.stdout.decode()


def test_auto_on_a_single_node_is_classic_subscribe_and_publish(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    sub = subscribe(taskd, redis_server.url, "--channel", "news")
    assert sub.wait_for_event("subscriber.started", 10)[0]["pubsub"] == "auto"
    line = sub.wait_for_event("pubsub.subscribed", 10)[0]
    assert line["kind"] == "classic" and "nodes" not in line, line
    admin = redis_server.client()
    assert admin.pubsub_numsub("news") == [(b"news", 1)]
    assert admin.execute_command("PUBSUB", "SHARDNUMSUB", "news") == [b"news", 0]
    out = publish_until_handled(taskd, redis_server.url, "news")
    assert out == "published 1 message(s) on news\n"  # unchanged: PUBLISH


def test_sharded_on_a_single_redis_7_uses_spublish_and_ssubscribe(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    sub = subscribe(taskd, redis_server.url, "--channel", "news", "--channel", "other", *SH)
    assert sub.wait_for_event("pubsub.subscribed", 10)[0]["kind"] == "sharded"
    admin = redis_server.client()
    assert admin.execute_command("PUBSUB", "SHARDNUMSUB", "news", "other") == [
        b"news",
        1,
        b"other",
        1,
    ]
    assert admin.pubsub_numsub("news") == [(b"news", 0)]  # no classic subscription
    out = publish_until_handled(taskd, redis_server.url, "news", *SH)
    assert out == "published 1 message(s) on news (SPUBLISH)\n"
    # the smessage of the second channel too, and what a third party SPUBLISHes
    assert admin.execute_command("SPUBLISH", "other", "third") == 1
    wait_until(lambda: "third" in taskd.done_bodies(), 10, "the third-party SPUBLISH handled")


def test_sharded_with_a_pattern_is_refused_in_one_line(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    done = taskd.run("subscribe", "--redis-url", redis_server.url, "--pattern", "n*", *SH, *HANDLER)
    assert done.returncode == 78, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "there are no sharded patterns" in lines[0], lines
    rule = settings_rules.sharded_pubsub_has_no_patterns
    assert rule in settings_rules.RULES and rule(Settings()) is None
    with pytest.raises(ConfigError, match="^--pattern=n\\* with --pubsub sharded: "):
        Settings(pubsub="sharded", patterns=("n*",)).validate()


@pytest.fixture
def redis_without_sharded(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis whose SPUBLISH and SSUBSCRIBE are renamed away: what Redis 6 looks like."""
    server = RedisServer(
        tmp_path / "no-sharded",
        None,
        "--rename-command",
        "SPUBLISH",
        "",
        "--rename-command",
        "SSUBSCRIBE",
        "",
    )
    server.start()
    yield server
    server.stop()


def test_sharded_on_a_server_without_it_exits_78_in_one_line_auto_stays_classic(
    redis_without_sharded: RedisServer, taskd: DaemonFactory
) -> None:
    url = redis_without_sharded.url
    expected = re.compile(r"^taskd \w+: error: --pubsub sharded: redis \S+ has no SPUBLISH")
    sub = subscribe(taskd, url, "--channel", "news", *SH)
    assert sub.wait(15) == 78  # at once: not an outage retried
    output = sub.log_path.read_text().strip().splitlines()
    assert expected.match(output[-1]), output[-3:]
    assert not any("Traceback" in line for line in output)
    done = taskd.run("publish", "--redis-url", url, "--channel", "news", *SH, "x")
    assert done.returncode == 78
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and expected.match(lines[0]), lines
    # auto on a single node never asks: classic, as before
    subscribe(taskd, url, "--channel", "news").wait_for_event("pubsub.subscribed", 10)
    publish_until_handled(taskd, url, "news")


def test_web_pubsub_route_publishes_with_the_chosen_kind(redis_server: RedisServer) -> None:
    from daemon.web import create_app

    probe = redis_server.client().pubsub()
    probe.ssubscribe("feed")
    probe.subscribe("feed")
    confirmed = [probe.get_message(timeout=2) for _ in range(2)]
    assert [m["type"] for m in confirmed if m] == ["ssubscribe", "subscribe"], confirmed
    for kind, expected in (("sharded", "smessage"), ("auto", "message")):
        settings = config.load(
            {"redis_url": redis_server.url, "channels": ("feed",), "pubsub": kind}, env={}
        )
        web = create_app(settings).test_client()
        assert web.get("/pubsub").status_code == 302
        message = wait_until(lambda: probe.get_message(timeout=0.5), 5, "the /pubsub message")
        assert message["type"] == expected, (kind, message)
    probe.close()
