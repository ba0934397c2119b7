"""An idle consumer is cheap for Redis, and its heartbeat never lapses (real redis-server)."""

from __future__ import annotations

import time

from conftest import DaemonFactory, RedisServer, wait_until

Q = "jobs"
WINDOW = 12.0  # seconds measured: more than one recovery interval at the defaults (10 s)
# what an idle consumer sends itself (scripts count once; the commands they run inside are
# counted by Redis too, see the total below)
SENT = ("cmdstat_evalsha", "cmdstat_blmove", "cmdstat_lmove", "cmdstat_zrange", "cmdstat_llen")


def test_idle_consumer_at_the_defaults_sends_few_commands_and_stays_alive(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    taskd.consume(
        redis_server.url, "--queue", Q, "--handler", "daemon.handlers:noop", "--worker-id", "w",
        "--block-timeout", "5", "--backoff-cap", "5", "--backoff-base", "0.2",
    )  # fmt: skip
    wait_until(lambda: int(client.info("clients")["blocked_clients"]) == 1, 15, "idle, blocked")
    client.config_resetstat()
    began = time.monotonic()
    lapses = []

    def window_over() -> bool:
        if not client.exists(f"{Q}:alive:w"):
            lapses.append(round(time.monotonic() - began, 2))
        return time.monotonic() - began >= WINDOW

    wait_until(window_over, WINDOW + 5, "the measuring window", interval=0.05)
    elapsed = time.monotonic() - began
    stats = client.info("commandstats")
    mine = ("cmdstat_info", "cmdstat_config", "cmdstat_exists")  # the test's own commands
    ours = {k: int(v["calls"]) for k, v in stats.items() if not k.startswith(mine)}
    sent = sum(n for k, n in ours.items() if k in SENT)
    assert lapses == [], f"heartbeat key missing at {lapses} s"
    # blocking claim every 5 s, promotion every turn, heartbeat every other turn, one
    # recovery look (ZRANGE + LLEN) per 10 s: about 0.7 sent and 1.4 counted per second
    assert sent / elapsed <= 0.8, ours
    assert sum(ours.values()) / elapsed <= 1.6, ours
