"""The web producer: the seed's Flask routes plus a small JSON API, served by gunicorn.

Every request answers within the Redis deadline: an unreachable Redis is a 503 JSON answer,
never a hanging request or an HTML traceback. Pushes are never retried silently (a resent
LPUSH could store a task twice); the caller sees the 503 and decides.

Two ways to serve it: `taskd web` (gunicorn in-process, `serve`), or the user's own WSGI
server with the factory `gunicorn 'daemon.web:app_from_env()'` (or `daemon.web:application`),
which reads the same TASKD_* environment and fails at app creation with one line.

This module holds the routes and those entry points; the checks a request passes first are
in daemon/web_guard.py, what /readyz and /metrics tell in daemon/web_health.py, gunicorn's
set-up in daemon/web_server.py.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog
from flask import Flask, Response, redirect, request
from gunicorn.errors import AppImportError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from daemon import metrics, web_server
from daemon.config import ConfigError, Settings
from daemon.connection import make_client
from daemon.liveness import enable_stack_dumps
from daemon.producer import (
    ReplicasNotConfirmed,
    ShardCycle,
    enqueue,
    enqueue_delayed,
    parse_delay,
    publish,
)
from daemon.redis_errors import is_transient
from daemon.status import sharded_statuses
from daemon.web_guard import (
    MAX_BODY_BYTES,
    Refusal,
    RequestGuard,
    json_body_refusal,
    too_large_doc,
)
from daemon.web_health import RedisHealth, readiness, web_registry

# A web request waits for Redis at most this long (connect, handshake, or one reply), even when
# the consumers' socket timeout is longer: they block on purpose, a request never should.
REQUEST_DEADLINE = 2.0

T = TypeVar("T")

_log = structlog.get_logger("taskd.web")

INDEX_HTML = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>Redis Message Queue</title></head>
<body>
<center>
<h3>Redis Message Queue</h3>
<p><a href="/prodcons">Producer / consumer (生产消费者模式)</a></p>
<p><a href="/pubsub">Publish / subscribe (发布订阅者模式)</a></p>
</center>
</body>
</html>
"""


class BadTask(ValueError):
    """A POST /api/tasks document that breaks the contract; str(error) is the 400 reason."""


def web_settings(settings: Settings) -> Settings:
    """`settings` with the Redis deadlines of a web request (never longer than configured).

    With --wait-replicas a push's reply comes after WAIT: the socket waits that much longer.
    """
    waiting = settings.wait_timeout if settings.wait_replicas else 0.0
    return dataclasses.replace(
        settings,
        socket_timeout=min(settings.socket_timeout, REQUEST_DEADLINE) + waiting,
        connect_timeout=min(settings.connect_timeout, REQUEST_DEADLINE),
    )


@dataclass(frozen=True)
class TaskRequest:
    """One valid POST /api/tasks document."""

    queue: str
    body: str
    delay: float = 0.0  # seconds; 0 = push at once


def parse_task(raw: bytes, queues: tuple[str, ...]) -> TaskRequest:
    """The task of a POST /api/tasks body; raises BadTask with the reason.

    `delay` is optional: seconds (a JSON number) or a duration string ("30s", "5m").
    """
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise BadTask(f"body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadTask('expected a JSON object {"queue": "...", "body": "..."}')
    fields: dict[str, str] = {}
    for name in ("queue", "body"):
        value = doc.get(name)
        if value is None:
            raise BadTask(f"missing field {name!r}")
        if not isinstance(value, str):
            raise BadTask(f"field {name!r} must be a string, got {type(value).__name__}")
        if not value:
            raise BadTask(f"field {name!r} must not be empty")
        fields[name] = value
    if fields["queue"] not in queues:
        # The API is open (no token yet): it must not become a way to write arbitrary keys.
        raise BadTask(f"unknown queue {fields['queue']!r}; this server serves {list(queues)}")
    delay = doc.get("delay")
    try:
        seconds = 0.0 if delay is None else parse_delay(delay)
    except ValueError as exc:
        raise BadTask(f"field 'delay': {exc}") from None
    return TaskRequest(fields["queue"], fields["body"], seconds)


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(doc), status=status, mimetype="application/json", headers=headers or {}
    )


def _refused(refusal: Refusal) -> Response:
    return _json(refusal.status, refusal.doc, refusal.headers)


def create_app(
    settings: Settings, client: redis.Redis | None = None, *, trust_listener: bool = False
) -> Flask:
    """The Flask app; `client` is injectable for tests (default: a client with web deadlines).

    With `trust_listener` (the app served by a WSGI server taskd did not start), a Host that
    names the address the request arrived on is served too: the server's `-b` is not
    TASKD_WEB_BIND. Raises ConfigError when the settings leave a route without a target.
    """
    if not settings.channels:
        raise ConfigError("--channel: expected at least one channel for /pubsub (TASKD_CHANNELS)")
    queue, channel = settings.queues[0], settings.channels[0]
    redis_client = (
        client if client is not None else make_client(web_settings(settings), "taskd-web")
    )

    guard = RequestGuard(settings, trust_listener=trust_listener)
    health = RedisHealth()
    exposed = web_registry()
    waits = (settings.wait_replicas, settings.wait_timeout)
    shards = ShardCycle(settings.queues, settings.shards)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.debug = False  # never the debugger: it executes code sent by the browser

    def pushed(call: Callable[[], T]) -> T:
        """One push to Redis: timed, its outcome told to the gauge and to /readyz."""
        with metrics.WEB_ENQUEUE_SECONDS.time():
            return health.observe(call, push=True)

    @app.before_request
    def check_request() -> Response | None:
        """Refuse (403, 401) what daemon.web_guard refuses, before any route runs."""
        refusal = guard.check(request)
        return None if refusal is None else _refused(refusal)

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unknown"
        metrics.WEB_REQUESTS.labels(route=rule, status=str(response.status_code)).inc()
        return response

    @app.get("/")
    def index() -> str:
        return INDEX_HTML

    @app.get("/prodcons")
    def prodcons() -> BaseResponse:
        elem = random.randrange(10)
        shard = shards.next(queue)
        depth = pushed(lambda: enqueue(redis_client, shard, str(elem), *waits))
        _log.info("web.lpush", queue=shard, task=elem, depth=depth)
        return redirect("/")

    @app.get("/pubsub")
    def pubsub() -> BaseResponse:
        elem = random.randrange(10)
        receivers = pushed(
            lambda: publish(redis_client, channel, str(elem), settings.durable, *waits)
        )
        _log.info("web.publish", channel=channel, message=elem, receivers=receivers)
        return redirect("/")

    @app.post("/api/tasks")
    def post_task() -> Response:
        refusal = json_body_refusal(request.mimetype, request.headers.get("Content-Type", ""))
        if refusal is not None:
            return _refused(refusal)
        try:
            task = parse_task(request.get_data(cache=False), settings.queues)
        except BadTask as exc:
            return _json(400, {"error": str(exc)})
        shard = shards.next(task.queue)
        onto = (
            {"queue": task.queue} if shard == task.queue else {"queue": task.queue, "shard": shard}
        )
        if task.delay > 0:
            return _schedule(task, shard, onto)
        depth = pushed(lambda: enqueue(redis_client, shard, task.body, *waits))
        _log.info("web.enqueue", queue=shard, size=len(task.body), depth=depth)
        return _json(202, {**onto, "depth": depth})

    def _schedule(task: TaskRequest, shard: str, onto: dict[str, str]) -> Response:
        """A delayed POST /api/tasks: into the shard's delayed set, due on Redis's clock."""
        done = pushed(lambda: enqueue_delayed(redis_client, shard, task.body, task.delay, *waits))
        _log.info(
            "web.enqueue_delayed",
            queue=shard,
            size=len(task.body),
            delay=task.delay,
            delayed=done.delayed,
        )
        doc = {**onto, "delay": task.delay, "due_at": done.due_at}
        return _json(202, {**doc, "delayed": done.delayed})

    @app.get("/api/queues")
    def queues() -> Response:
        rows = health.observe(
            lambda: [
                row.as_dict()
                for row in sharded_statuses(redis_client, settings.queues, settings.shards)
            ]
        )
        return _json(200, {"queues": rows})

    @app.get("/metrics")
    def metrics_page() -> Response:
        health.refresh(redis_client.ping)  # an idle web process still tells the truth
        payload = generate_latest(exposed)
        return Response(payload, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/healthz")
    def healthz() -> Response:
        # Liveness only: a Redis outage must not get the web process restarted (see /readyz).
        return _json(200, {"state": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        return _json(*readiness(health, redis_client.ping))

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError) -> Response:
        kind = type(exc).__name__
        if is_transient(exc):
            _log.warning("web.redis_unavailable", route=request.path, error=f"{kind}: {exc}")
            return _json(
                503,
                {"error": "redis unavailable", "kind": kind, "retry_after": 1},
                {"Retry-After": "1"},
            )
        _log.error("web.redis_error", route=request.path, error=f"{kind}: {exc}")
        return _json(500, {"error": "redis error", "kind": kind})

    @app.errorhandler(ReplicasNotConfirmed)
    def not_replicated(exc: ReplicasNotConfirmed) -> Response:
        _log.warning("web.replication_not_confirmed", route=request.path, error=str(exc))
        return _json(
            503,
            {
                "error": "replication not confirmed",
                "confirmed": exc.confirmed,
                "wanted": exc.wanted,
                "timeout": exc.timeout,
                # the push happened: a client that retries may store the task twice
                "stored_on_master": True,
            },
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> BaseResponse:
        doc: dict[str, Any] = {"error": (exc.name or "error").lower()}
        if exc.code == 413:
            doc = too_large_doc()
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(json.dumps(doc))
        response.mimetype = "application/json"
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        _log.exception("web.internal_error", route=request.path)
        return _json(500, {"error": "internal server error"})

    return app


def serve(settings: Settings) -> int:
    """`taskd web`: serve the app under gunicorn until SIGTERM/SIGINT; 0 on a clean stop.

    The app is built before gunicorn starts so a configuration error is exit 78, not a worker
    boot loop.
    """
    enable_stack_dumps()
    return web_server.run(create_app(settings), settings)


class WsgiConfigError(ConfigError, AppImportError, RuntimeError):
    """A bad TASKD_* setting met by the WSGI factory: one line, whoever runs the app.

    gunicorn prints an AppImportError raised while a worker loads the app as its bare message
    and stops the whole server (exit 4, "App failed to load") instead of booting workers in a
    loop; with --preload it prints a RuntimeError as "Error: <message>" and exits 1.
    """


def app_from_env(env: Mapping[str, str] | None = None, configure_logging: bool = True) -> Flask:
    """The app configured from TASKD_* alone: `gunicorn 'daemon.web:app_from_env()'`.

    Settings come from daemon.config.load with no flags, exactly as `taskd web` without flags
    reads them; the bind is the WSGI server's own (-b), and a Host naming that address is
    served. Raises WsgiConfigError with one line for any bad value, before any request.
    With `configure_logging`, taskd's log lines are JSON on stdout (TASKD_LOG_LEVEL/FORMAT).
    """
    from daemon import settings_rules
    from daemon.config import load

    try:
        settings = load({}, env=env)
        for rule in (*settings_rules.QUEUE_RULES, *settings_rules.CHANNEL_RULES):
            if message := rule(settings):  # as `taskd web` checks them (daemon/commands.py)
                raise ConfigError(message)
        if configure_logging:
            from daemon.logs import configure_logging as setup_logs

            setup_logs(settings.log_level, settings.log_format)
        enable_stack_dumps()
        return create_app(settings, trust_listener=True)
    except ConfigError as exc:
        raise WsgiConfigError(f"taskd web (WSGI app daemon.web): error: {exc}") from None


_application: Flask | None = None
_application_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`daemon.web:application`, built from the environment on first use (not at import:
    importing daemon.web must not read TASKD_* or need a valid configuration)."""
    global _application
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _application_lock:
        if _application is None:
            _application = app_from_env()
        return _application
