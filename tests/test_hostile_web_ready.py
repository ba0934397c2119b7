"""The web process's /readyz tells the truth when Redis answers but refuses every push."""

from __future__ import annotations

from conftest import RedisServer, fill
from daemon import config
from daemon.keys import DEFAULT_QUEUE
from daemon.web import create_app


def test_readyz_is_503_while_redis_refuses_pushes_for_lack_of_memory(
    full_redis: RedisServer,
) -> None:
    settings = config.load({"redis_url": full_redis.url}, env={})
    web = create_app(settings).test_client()
    admin = full_redis.client()
    assert web.get("/readyz").status_code == 200
    fill(full_redis)
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
