"""`taskd status` tells the operator when Redis may evict queued tasks."""

from __future__ import annotations

from conftest import DaemonFactory, RedisServer


def test_status_names_the_eviction_policy_and_warns_unless_noeviction(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    redis_server.client().config_set("maxmemory-policy", "allkeys-lru")
    result = taskd.run("status", "--redis-url", redis_server.url, "--queue", "q")
    assert result.returncode == 0, result.stderr
    assert "redis maxmemory-policy: allkeys-lru" in result.stdout.decode()
    warning = result.stderr.decode()
    assert warning.startswith("warning: ") and "noeviction" in warning

    redis_server.client().config_set("maxmemory-policy", "noeviction")
    result = taskd.run("status", "--redis-url", redis_server.url, "--queue", "q")
    assert "redis maxmemory-policy: noeviction" in result.stdout.decode()
    assert result.stderr == b""
