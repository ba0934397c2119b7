"""/healthz and /readyz tell the truth: pure decisions on a fake clock, and the guarded server.

Liveness is "work is getting done, or there is none to do"; a dead helper thread fails it;
"Redis is down" is readiness's business, and so is "Redis refuses writes".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import REGISTRY

from conftest import free_port, wait_until
from daemon.config import Settings, load
from daemon.faults import LinkState, make_backoff
from daemon.liveness import Progress
from daemon.probes import health, readiness, serve_metrics


class _Log:
    """Collects log calls (LinkState and the guard log through it)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((event, fields))


def _setup(**values: str) -> tuple[list[float], Progress, LinkState, Settings]:
    now = [0.0]
    settings = load({"stall_timeout": "60", "task_timeout": "300", **values}, env={})
    progress = Progress(clock=lambda: now[0])
    link = LinkState(make_backoff(settings), _Log(), clock=lambda: now[0])
    return now, progress, link, settings


def test_healthz_is_503_when_redis_answers_but_nothing_is_claimed_or_settled() -> None:
    now, progress, link, settings = _setup()
    link.succeeded()
    now[0] = 59.0
    progress.mark()  # the loop turns (a failed retry marks progress): not work
    assert health(progress, settings, link)[0] == 200
    now[0] = 61.0
    progress.mark()
    status, body = health(progress, settings, link)
    assert status == 503 and body["state"] == "stalled"
    assert "no task claimed or settled for 61.0 s" in body["reason"]
    assert "--stall-timeout 60" in body["reason"] and body["seconds_since_work"] == 61.0
    progress.work_done()  # a claim (or a claim that found the queue empty)
    assert health(progress, settings, link) == (200, health(progress, settings, link)[1])
    assert health(progress, settings, link)[1]["state"] == "ok"


def test_healthz_ignores_stale_work_while_redis_is_unreachable() -> None:
    now, progress, link, settings = _setup()
    link.failed(ConnectionError("refused"))
    now[0] = 600.0
    progress.mark()
    status, body = health(progress, settings, link)
    assert status == 200 and body["seconds_since_work"] == 600.0


def test_healthz_fails_for_stale_work_while_redis_refuses_writes() -> None:
    now, progress, link, settings = _setup()
    link.succeeded()  # a full Redis answers: the consumer keeps the link up (daemon/memory.py)
    link.refusing = "out of memory (maxmemory reached)"
    now[0] = 61.0
    progress.mark()
    status, body = health(progress, settings, link)
    assert status == 503
    assert "Redis refuses writes: out of memory (maxmemory reached)" in body["reason"]


def test_healthz_counts_stale_work_from_when_redis_came_back() -> None:
    now, progress, link, settings = _setup()
    now[0] = 3600.0  # an hour-long outage has just ended
    link.succeeded()
    progress.mark()
    assert health(progress, settings, link, since_reachable=2.0)[0] == 200
    assert health(progress, settings, link, since_reachable=61.0)[0] == 503


def test_healthz_judges_a_running_task_by_its_age_not_by_the_work_clock() -> None:
    now, progress, link, settings = _setup()
    link.succeeded()
    progress.task_started("jobs:abc")
    now[0] = 200.0  # longer than the stall timeout, shorter than --task-timeout 300
    assert health(progress, settings, link)[0] == 200
    now[0] = 301.0
    status, body = health(progress, settings, link)
    assert status == 503 and "--task-timeout 300" in body["reason"]


def test_healthz_fails_naming_the_dead_helper_thread_and_its_error() -> None:
    _, progress, link, settings = _setup()
    link.succeeded()
    progress.helper_died("task-heartbeat", "RuntimeError: boom")
    status, body = health(progress, settings, link)
    assert status == 503 and body["state"] == "helper_died"
    assert "task-heartbeat: RuntimeError: boom" in body["reason"]
    assert body["dead_helpers"] == {"task-heartbeat": "RuntimeError: boom"}


def test_readyz_says_why_redis_cannot_serve() -> None:
    now, _, link, _ = _setup()
    status, body = readiness(link)
    assert status == 503 and body["redis"] == "unknown" and body["reason"]
    link.failed(ConnectionError("refused"))
    link.failed(ConnectionError("refused"))
    now[0] = 12.5
    status, body = readiness(link)
    assert (status, body["redis"]) == (503, "down")
    assert body["reason"] == "Redis unreachable for 12.5 s (2 failed attempts)"
    link.succeeded()
    assert readiness(link) == (200, {"state": "ready", "redis": "connected"})
    link.refusing = "out of memory (maxmemory reached)"
    status, body = readiness(link)
    assert status == 503
    assert body["redis"] == "connected" and body["refusing"] == link.refusing
    assert "refuses writes" in body["reason"]


def test_readyz_names_the_eviction_policy_and_warns_unless_noeviction() -> None:
    _, _, link, _ = _setup()
    link.succeeded()
    link.eviction_policy = "noeviction"
    status, body = readiness(link)
    assert status == 200 and body["eviction_policy"] == "noeviction" and "warning" not in body
    link.eviction_policy = "allkeys-lru"
    status, body = readiness(link)
    assert status == 200 and body["eviction_policy"] == "allkeys-lru"
    assert "not noeviction" in body["warning"] and "lost" in body["warning"]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_dead_http_server_thread_is_counted_recorded_and_fails_healthz() -> None:
    port = free_port()
    settings = load({"metrics_port": str(port), "queues": "jobs"}, env={})
    progress = Progress()
    log = _Log()
    link = LinkState(make_backoff(settings), log)
    server = serve_metrics(settings, progress, link, log)
    deaths = REGISTRY.get_sample_value("taskd_helper_thread_deaths_total", {"thread": "http"})
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200

    def broken() -> None:
        raise RuntimeError("selector gone")

    server.service_actions = broken  # type: ignore[method-assign]  # a bug in the server loop
    wait_until(
        lambda: any(e == "thread.died" and f["thread"] == "http" for e, f in log.events),
        5,
        "the HTTP thread's death logged",
    )
    assert progress.dead_helpers["http"] == "RuntimeError: selector gone"
    after = REGISTRY.get_sample_value("taskd_helper_thread_deaths_total", {"thread": "http"})
    assert after == (deaths or 0.0) + 1
    status, body = health(progress, settings, link)
    assert status == 503 and "http: RuntimeError: selector gone" in body["reason"]
    server.server_close()


def test_healthz_never_shows_a_password_quoted_in_a_helper_error() -> None:
    _, progress, link, settings = _setup()
    progress.helper_died("http", "ConnectionError: redis://:s3cr/et@pw@10.0.0.1:6379/0 refused")
    status, body = health(progress, settings, link)
    assert status == 503 and "s3cr" not in json.dumps(body) and "***" in body["reason"]
