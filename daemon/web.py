"""The web producer: the seed's Flask routes plus a small JSON API, served by gunicorn.

Every request answers within the Redis deadline: an unreachable Redis is a 503 JSON answer,
never a hanging request or an HTML traceback. Pushes are never retried silently (a resent
LPUSH could store a task twice); the caller sees the 503 and decides.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import os
import random
from typing import Any

import redis
import structlog
from flask import Flask, Response, redirect, request
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from daemon import exitcodes, metrics
from daemon.config import ConfigError, Settings
from daemon.connection import is_transient, make_client
from daemon.producer import enqueue, publish
from daemon.status import queue_status

MAX_BODY_BYTES = 1024 * 1024
# A web request waits for Redis at most this long (connect, handshake, or one reply), even when
# the consumers' socket timeout is longer: they block on purpose, a request never should.
REQUEST_DEADLINE = 2.0
# One worker process with threads: /metrics then shows the whole process's counts, as every
# other taskd process does. Several workers would each serve their own counters at random and
# break rate(); scale out with more `taskd web` processes, each scraped on its own bind.
WORKERS = 1
THREADS = 8
WORKER_TIMEOUT = 30  # gunicorn kills a worker silent this long (far above REQUEST_DEADLINE)

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
    """`settings` with the Redis deadlines of a web request (never longer than configured)."""
    return dataclasses.replace(
        settings,
        socket_timeout=min(settings.socket_timeout, REQUEST_DEADLINE),
        connect_timeout=min(settings.connect_timeout, REQUEST_DEADLINE),
    )


def parse_task(raw: bytes, queues: tuple[str, ...]) -> tuple[str, str]:
    """(queue, body) from a POST /api/tasks body; raises BadTask with the reason."""
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
    return fields["queue"], fields["body"]


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(doc), status=status, mimetype="application/json", headers=headers or {}
    )


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    """The Flask app; `client` is injectable for tests (default: a client with web deadlines).

    Raises ConfigError when the settings leave a route without a target.
    """
    if not settings.channels:
        raise ConfigError("--channel: expected at least one channel for /pubsub (TASKD_CHANNELS)")
    queue, channel = settings.queues[0], settings.channels[0]
    redis_client = (
        client if client is not None else make_client(web_settings(settings), "taskd-web")
    )

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.debug = False  # never the debugger: it executes code sent by the browser

    @app.before_request
    def access_check() -> Response | None:
        """With TASKD_WEB_TOKEN set, /api/* needs `Authorization: Bearer <token>` (401 else).

        Compared in constant time, so response timing does not leak the token.
        """
        if not settings.web_token or not request.path.startswith("/api/"):
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = settings.web_token.encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return _json(
            401,
            {"error": "missing or wrong bearer token"},
            {"WWW-Authenticate": 'Bearer realm="taskd"'},
        )

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
        with metrics.WEB_ENQUEUE_SECONDS.time():
            depth = enqueue(redis_client, queue, str(elem))
        _log.info("web.lpush", queue=queue, task=elem, depth=depth)
        return redirect("/")

    @app.get("/pubsub")
    def pubsub() -> BaseResponse:
        elem = random.randrange(10)
        with metrics.WEB_ENQUEUE_SECONDS.time():
            receivers = publish(redis_client, channel, str(elem), durable=settings.durable)
        _log.info("web.publish", channel=channel, message=elem, receivers=receivers)
        return redirect("/")

    @app.post("/api/tasks")
    def post_task() -> Response:
        try:
            target, body = parse_task(request.get_data(cache=False), settings.queues)
        except BadTask as exc:
            return _json(400, {"error": str(exc)})
        with metrics.WEB_ENQUEUE_SECONDS.time():
            depth = enqueue(redis_client, target, body)
        _log.info("web.enqueue", queue=target, size=len(body), depth=depth)
        return _json(202, {"queue": target, "depth": depth})

    @app.get("/api/queues")
    def queues() -> Response:
        rows = [queue_status(redis_client, q).as_dict() for q in settings.queues]
        return _json(200, {"queues": rows})

    @app.get("/metrics")
    def metrics_page() -> Response:
        payload = generate_latest(metrics.registry())
        return Response(payload, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/healthz")
    def healthz() -> Response:
        # Liveness only: a Redis outage must not get the web process restarted (see /readyz).
        return _json(200, {"state": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            redis_client.ping()
        except redis.RedisError as exc:
            _log.warning("web.not_ready", error=f"{type(exc).__name__}: {exc}")
            return _json(503, {"state": "not_ready", "redis": "down"})
        return _json(200, {"state": "ready", "redis": "connected"})

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

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> BaseResponse:
        doc: dict[str, Any] = {"error": (exc.name or "error").lower()}
        if exc.code == 413:
            doc = {"error": "request body too large", "limit_bytes": MAX_BODY_BYTES}
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(json.dumps(doc))
        response.mimetype = "application/json"
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        _log.exception("web.internal_error", route=request.path)
        return _json(500, {"error": "internal server error"})

    return app


class JsonLogger(glogging.Logger):
    """gunicorn's error and access logs through the process's structlog renderer (JSON lines).

    Access lines go to stdout like every other line of a taskd process.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
                log.removeHandler(handler)
            log.propagate = True


class _Gunicorn(BaseApplication):
    """gunicorn in-process, configured only from here (no argv, no gunicorn.conf.py)."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn settings of `taskd web`."""
    return {
        "bind": [settings.web_bind],
        "workers": WORKERS,
        "worker_class": "gthread",
        "threads": THREADS,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": max(1, math.ceil(settings.drain_timeout)),
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logger_class": JsonLogger,
        "proc_name": "taskd-web",
        # gunicorn >= 25 opens a control socket at one per-user path: two servers would collide.
        "control_socket_disable": True,
    }


def serve(settings: Settings) -> int:
    """Serve the app under gunicorn on settings.web_bind until SIGTERM/SIGINT; 0 on a clean stop.

    The app is built before gunicorn starts so a configuration error is exit 78, not a worker
    boot loop.
    """
    app = create_app(settings)
    arbiter_pid = os.getpid()
    _log.info("web.starting", bind=settings.web_bind, workers=WORKERS, threads=THREADS)
    try:
        server = _Gunicorn(app, gunicorn_options(settings))
    except SystemExit:  # gunicorn refused a setting and said why on stderr
        return exitcodes.CONFIG
    try:
        server.run()
    except SystemExit as stop:  # gunicorn ends its arbiter and its workers with sys.exit
        code = stop.code
        status = code if isinstance(code, int) else (exitcodes.OK if code is None else 1)
    else:
        status = exitcodes.OK
    if os.getpid() == arbiter_pid:  # gunicorn's workers unwind through here too: stay quiet
        (_log.info if status == exitcodes.OK else _log.error)("web.stopped", exit_code=status)
    return status
