"""The web process's /readyz tells the truth when Redis answers but refuses every push."""

from __future__ import annotations

import redis

from conftest import RedisServer, wait_until
from daemon import config
from daemon.keys import DEFAULT_QUEUE
from daemon.web import create_app


def _fill(client: redis.Redis) -> None:
    """Set maxmemory just above what is used and fill until Redis refuses a write (OOM)."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used + 512 * 1024))

    def refused() -> bool:
        try:
            client.rpush("filler", b"x" * 64 * 1024)
        except redis.exceptions.OutOfMemoryError:
            return True
        return False

    wait_until(refused, 10, "Redis to refuse a write as out of memory")
    # and stay full: freed client buffers must not make room for the next push
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used - 256 * 1024))


def test_readyz_is_503_while_redis_refuses_pushes_for_lack_of_memory(
    redis_server: RedisServer,
) -> None:
    settings = config.load({"redis_url": redis_server.url}, env={})
    web = create_app(settings).test_client()
    admin = redis_server.client()
    assert web.get("/readyz").status_code == 200
    _fill(admin)
    task = {"queue": DEFAULT_QUEUE, "body": "b"}
    assert web.post("/api/tasks", json=task).status_code == 503
    ready = web.get("/readyz")
    assert ready.status_code == 503, ready.json
    assert ready.json["redis"] == "connected"
    assert ready.json["refusing"] == "out of memory (maxmemory reached)"
    admin.delete("filler")
    admin.config_set("maxmemory", "0")
    assert web.post("/api/tasks", json=task).status_code == 202
    assert web.get("/readyz").status_code == 200
