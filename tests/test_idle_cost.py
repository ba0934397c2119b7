"""An idle consumer is cheap for Redis, and its heartbeat never lapses (real redis-server)."""

from __future__ import annotations

import time

from conftest import DaemonFactory, RedisServer, wait_until

Q = "jobs"
WINDOW = 12.0  # seconds measured: more than one recovery interval at the defaults (10 s)
# what an idle consumer sends itself (scripts count once; the commands they run inside are
# counted by Redis too, see the total below)
SENT = ("evalsha", "blmove", "lmove", "exists", "zrange", "llen")


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
        if client.pttl(f"{Q}:alive:w") <= 0:  # PTTL: a command the consumer never sends
            lapses.append(round(time.monotonic() - began, 2))
        return time.monotonic() - began >= WINDOW

    wait_until(window_over, WINDOW + 5, "the measuring window", interval=0.05)
    elapsed = time.monotonic() - began
    stats = client.info("commandstats")
    mine = ("info", "config", "pttl")  # the test's own commands
    ours = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    ours = {k: n for k, n in ours.items() if not k.startswith(mine)}
    sent = sum(n for k, n in ours.items() if k in SENT)
    assert lapses == [], f"heartbeat key missing at {lapses} s"
    # a blocking claim every 5 s, a look for delayed tasks every turn, the heartbeat every
    # other turn, one recovery look (ZRANGE + LLEN) per 10 s: 0.7 sent and 1.0 counted per s
    assert sent / elapsed <= 0.8, ours
    assert sum(ours.values()) / elapsed <= 1.2, ours
