"""Redis full or evicting: taskd reads the eviction policy truthfully (real redis-servers)."""

from __future__ import annotations

from conftest import RedisServer
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
