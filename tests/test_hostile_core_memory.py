"""Redis full or evicting: taskd reads the eviction policy truthfully (real redis-servers)."""

from __future__ import annotations

import urllib.request

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon.memory import consequence, eviction_policy


def test_eviction_policy_is_read_with_config(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert eviction_policy(client) == "noeviction"
    client.config_set("maxmemory-policy", "allkeys-lru")
    assert eviction_policy(client) == "allkeys-lru"
    assert "lost" in consequence("allkeys-lru")
    assert "twice" in consequence("volatile-ttl")
    assert consequence("noeviction") == ""


def test_eviction_policy_falls_back_to_info_when_acl_denies_config(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    admin.config_set("maxmemory-policy", "volatile-lru")
    admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], commands=["+@all", "-config"], keys=["*"]
    )
    app = redis_server.client(username="app", password="pw")
    assert eviction_policy(app) == "volatile-lru"
    admin.acl_setuser("blind", enabled=True, passwords=["+pw"], commands=["+ping"], keys=["*"])
    assert eviction_policy(redis_server.client(username="blind", password="pw")) == ""


HANDLER = ("--handler", "handlers_for_tests:record")


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_evicting_policy_is_warned_once_and_exported(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    redis_server.client().config_set("maxmemory-policy", "allkeys-lru")
    port = free_port()
    daemon = taskd.consume(
        redis_server.url, "--queue", "jobs", *HANDLER, "--metrics-port", str(port)
    )
    line = daemon.wait_for_event("redis.eviction_policy_unsafe", 10)[0]
    assert (line["policy"], line["expected"]) == ("allkeys-lru", "noeviction")
    assert "pending and processing lists" in line["effect"]
    text = wait_until(lambda: _metrics(port), 10, "metrics")
    assert 'taskd_redis_eviction_policy{policy="allkeys-lru"} 1.0' in text
    assert 'policy="noeviction"' not in text
    redis_server.client().lpush("jobs", "task")
    wait_until(lambda: taskd.done_bodies() == ["task"], 10, "a task still consumed")
    assert len(daemon.events("redis.eviction_policy_unsafe")) == 1
    # a new connection episode (here another configuration after a restart): read again
    redis_server.stop()
    redis_server.start("--maxmemory-policy", "volatile-lru")
    daemon.wait_for_event("redis.reconnected", 15)
    lines = daemon.wait_for_event("redis.eviction_policy_unsafe", 10, count=2)
    assert lines[1]["policy"] == "volatile-lru" and "run twice" in lines[1]["effect"]
    text = _metrics(port)
    assert 'taskd_redis_eviction_policy{policy="volatile-lru"} 1.0' in text
    assert 'policy="allkeys-lru"' not in text
    assert len(daemon.events("redis.eviction_policy_unsafe")) == 2


def test_require_noeviction_refuses_an_evicting_redis_with_exit_78(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    redis_server.client().config_set("maxmemory-policy", "volatile-ttl")
    daemon = taskd.consume(redis_server.url, "--queue", "jobs", *HANDLER, "--require-noeviction")
    assert daemon.wait(15) == 78
    errors = [x for x in daemon.log_path.read_text().splitlines() if "error:" in x]
    assert len(errors) == 1
    assert "maxmemory-policy is volatile-ttl; expected noeviction" in errors[0]


def test_require_noeviction_accepts_noeviction_read_through_info_under_acl(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    admin = redis_server.client()
    admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], commands=["+@all", "-config"], keys=["*"]
    )
    url = f"redis://app:pw@127.0.0.1:{redis_server.port}/0"
    daemon = taskd.consume(url, "--queue", "jobs", *HANDLER, "--require-noeviction")
    admin.lpush("jobs", "task")
    wait_until(lambda: taskd.done_bodies() == ["task"], 10, "the task consumed")
    assert daemon.proc.poll() is None
    assert daemon.events("redis.eviction_policy_unsafe") == []
