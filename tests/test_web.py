"""The web producer's contract: seed routes, JSON API, error answers, metrics, real server."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from web_harness import start_taskd_web

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon import config
from daemon.config import Settings
from daemon.keys import DEFAULT_CHANNEL, DEFAULT_QUEUE, QueueKeys
from daemon.web import MAX_BODY_BYTES, REQUEST_DEADLINE, create_app

Q = DEFAULT_QUEUE


def settings_for(url: str, **flags: Any) -> Settings:
    return config.load({"redis_url": url, **flags}, env={})


@pytest.fixture
def web(redis_server: RedisServer) -> FlaskClient:
    return create_app(settings_for(redis_server.url)).test_client()


@pytest.fixture
def dead_redis_url() -> str:
    """A URL on a loopback port where nothing listens (connection refused)."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def black_hole_url() -> Iterator[str]:
    """A URL whose TCP connect succeeds (kernel backlog) but nothing ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def requests_counted(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    return REGISTRY.get_sample_value("taskd_web_requests_total", labels) or 0.0


def test_index_links_to_both_seed_routes(web: FlaskClient) -> None:
    response = web.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Redis Message Queue" in page
    assert 'href="/prodcons"' in page
    assert 'href="/pubsub"' in page


def test_prodcons_pushes_exactly_one_digit_and_redirects_home(
    web: FlaskClient, redis_server: RedisServer
) -> None:
    response = web.get("/prodcons")
    assert response.status_code == 302
    assert response.location == "/"
    tasks = redis_server.client().lrange(Q, 0, -1)
    assert len(tasks) == 1
    assert tasks[0] in {str(d).encode() for d in range(10)}


def test_pubsub_publishes_one_digit_to_a_subscriber_and_redirects_home(
    web: FlaskClient, redis_server: RedisServer
) -> None:
    subscriber = redis_server.client().pubsub()
    subscriber.subscribe(DEFAULT_CHANNEL)
    assert subscriber.get_message(timeout=2)["type"] == "subscribe"
    response = web.get("/pubsub")
    assert response.status_code == 302
    assert response.location == "/"
    message = wait_until(lambda: subscriber.get_message(timeout=0.5), 5, "the published message")
    assert message["channel"] == DEFAULT_CHANNEL.encode()
    assert message["data"] in {str(d).encode() for d in range(10)}
    assert subscriber.get_message(timeout=0.3) is None  # exactly one
    subscriber.close()


def test_posted_task_is_accepted_with_queue_depth_and_stored_as_sent(
    web: FlaskClient, redis_server: RedisServer
) -> None:
    first = web.post("/api/tasks", json={"queue": Q, "body": "send mail to 张三"})
    second = web.post("/api/tasks", json={"queue": Q, "body": "second"})
    assert first.status_code == 202
    assert first.get_json() == {"queue": Q, "depth": 1}
    assert second.get_json() == {"queue": Q, "depth": 2}
    stored = redis_server.client().lrange(Q, 0, -1)
    assert stored == [b"second", "send mail to 张三".encode()]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'["a list"]', "JSON object"),
        (b"null", "JSON object"),
        (b'{"body": "x"}', "missing field 'queue'"),
        (json.dumps({"queue": Q}).encode(), "missing field 'body'"),
        (json.dumps({"queue": Q, "body": ""}).encode(), "must not be empty"),
        (json.dumps({"queue": "", "body": "x"}).encode(), "must not be empty"),
        (json.dumps({"queue": Q, "body": 7}).encode(), "must be a string"),
        (json.dumps({"queue": ["q"], "body": "x"}).encode(), "must be a string"),
        (json.dumps({"queue": "someone:else", "body": "x"}).encode(), "unknown queue"),
    ],
)
def test_malformed_task_is_refused_with_400_json_and_nothing_is_pushed(
    web: FlaskClient, redis_server: RedisServer, data: bytes, reason: str
) -> None:
    response = web.post("/api/tasks", data=data, content_type="application/json")
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert reason in response.get_json()["error"]
    assert redis_server.client().dbsize() == 0


def test_body_over_one_mib_is_refused_with_413_json(
    web: FlaskClient, redis_server: RedisServer
) -> None:
    body = json.dumps({"queue": Q, "body": "x" * (2 * 1024 * 1024)})
    response = web.post("/api/tasks", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json() == {
        "error": "request body too large",
        "limit_bytes": MAX_BODY_BYTES,
    }
    assert redis_server.client().llen(Q) == 0


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", "/prodcons", None),
        ("GET", "/pubsub", None),
        ("POST", "/api/tasks", {"queue": Q, "body": "x"}),
        ("GET", "/api/queues", None),
    ],
)
def test_unreachable_redis_is_a_prompt_503_json(
    dead_redis_url: str, method: str, path: str, payload: dict[str, str] | None
) -> None:
    web = create_app(settings_for(dead_redis_url)).test_client()
    before = requests_counted(path, 503)
    started = time.monotonic()
    response = web.open(path, method=method, json=payload)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json()["error"] == "redis unavailable"
    assert response.headers["Retry-After"] == "1"
    assert elapsed < 3
    assert requests_counted(path, 503) == before + 1


def test_silent_redis_is_a_503_json_after_the_request_deadline_not_a_hang(
    black_hole_url: str,
) -> None:
    web = create_app(settings_for(black_hole_url)).test_client()
    started = time.monotonic()
    response = web.post("/api/tasks", json={"queue": Q, "body": "x"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json()["kind"] == "TimeoutError"
    assert elapsed < REQUEST_DEADLINE + 1.5


def test_redis_refusing_the_command_is_a_500_json_not_an_html_page(
    web: FlaskClient, redis_server: RedisServer
) -> None:
    redis_server.client().set(Q, "not a list")  # LPUSH now answers WRONGTYPE
    response = web.get("/prodcons")
    assert response.status_code == 500
    assert response.get_json() == {"error": "redis error", "kind": "ResponseError"}


def test_unexpected_error_is_a_500_json_not_a_traceback(redis_server: RedisServer) -> None:
    class Broken(redis.Redis):  # the push (one script with its enqueue stamp) fails
        def evalsha(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("bug in a producer")

    app = create_app(settings_for(redis_server.url), client=Broken(port=redis_server.port))
    response = app.test_client().get("/prodcons")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error"}
    assert "Traceback" not in response.get_data(as_text=True)


def test_unknown_path_and_wrong_method_answer_json(web: FlaskClient) -> None:
    before = requests_counted("unknown", 404)
    missing = web.get("/nowhere")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "not found"}
    assert requests_counted("unknown", 404) == before + 1
    wrong = web.get("/api/tasks")
    assert wrong.status_code == 405
    assert wrong.get_json() == {"error": "method not allowed"}
    assert "POST" in wrong.headers["Allow"]


def test_queue_status_shows_depths_and_workers(web: FlaskClient, redis_server: RedisServer) -> None:
    keys = QueueKeys(Q)
    client = redis_server.client()
    client.lpush(Q, "a", "b", "c")
    client.lpush(keys.processing("w1"), "held")
    client.zadd(keys.workers, {"w1": time.time()})
    client.set(keys.alive("w1"), "1", ex=30)
    response = web.get("/api/queues")
    assert response.status_code == 200
    (row,) = response.get_json()["queues"]
    assert row["queue"] == Q
    assert (row["pending"], row["processing"], row["delayed"], row["dead"]) == (3, 1, 0, 0)
    (worker,) = row["workers"]
    assert (worker["worker"], worker["alive"], worker["processing"]) == ("w1", True, 1)


def test_metrics_count_requests_by_route_and_status_and_time_enqueues(
    web: FlaskClient,
) -> None:
    timed = REGISTRY.get_sample_value("taskd_web_enqueue_seconds_count") or 0.0
    before = requests_counted("/prodcons", 302)
    web.get("/prodcons")
    web.get("/prodcons")
    page = web.get("/metrics")
    assert page.status_code == 200
    assert page.mimetype == "text/plain"
    text = page.get_data(as_text=True)
    assert 'taskd_web_requests_total{route="/prodcons",status="302"}' in text
    assert requests_counted("/prodcons", 302) == before + 2
    assert REGISTRY.get_sample_value("taskd_web_enqueue_seconds_count") == timed + 2


def test_healthz_is_liveness_and_readyz_follows_redis(
    web: FlaskClient, dead_redis_url: str
) -> None:
    assert web.get("/healthz").get_json() == {"state": "ok"}
    assert web.get("/readyz").status_code == 200
    down = create_app(settings_for(dead_redis_url)).test_client()
    assert down.get("/healthz").status_code == 200
    ready = down.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json() == {"state": "not_ready", "redis": "down"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_taskd_web_serves_the_seed_routes_and_stops_cleanly_on_sigterm(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    server, port = start_taskd_web(taskd, redis_server.url)
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirected:
        opener.open(f"{base}/prodcons", timeout=5)
    assert redirected.value.code == 302
    assert redirected.value.headers["Location"] == "/"
    tasks = redis_server.client().lrange(Q, 0, -1)
    assert len(tasks) == 1
    assert tasks[0] in {str(d).encode() for d in range(10)}

    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    events = [line.get("event", "") for line in server.lines()]
    assert any("GET /prodcons" in event for event in events), "access log line on stdout"
    assert "web.lpush" in events
    assert "web.stopped" in events
