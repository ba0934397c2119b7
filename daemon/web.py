"""The web producer: the seed's Flask routes plus a small JSON API, served by gunicorn.

Every request answers within the Redis deadline: an unreachable Redis is a 503 JSON answer,
never a hanging request or an HTML traceback. Pushes are never retried silently (a resent
LPUSH could store a task twice); the caller sees the 503 and decides.

Two ways to serve it: `taskd web` (gunicorn in-process, `serve`), or the user's own WSGI
server with the factory `gunicorn 'daemon.web:app_from_env()'` (or `daemon.web:application`),
which reads the same TASKD_* environment and fails at app creation with one line.

The routes that change state (/prodcons, /pubsub, /api/*) only answer requests that name this
server in `Host` (a DNS-rebound name does not) and that no browser sent from another origin
(`Origin`, `Sec-Fetch-Site`); POST /api/tasks also needs `Content-Type: application/json`,
which a cross-site HTML form or a `no-cors` fetch cannot send.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import ipaddress
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
import structlog
from flask import Flask, Response, redirect, request
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from daemon import exitcodes, metrics, web_systemd
from daemon.config import ConfigError, Settings
from daemon.connection import is_transient, make_client, refusal_reason
from daemon.liveness import enable_stack_dumps
from daemon.producer import (
    ReplicasNotConfirmed,
    enqueue,
    enqueue_delayed,
    parse_delay,
    publish,
)
from daemon.status import queue_statuses

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
# Routes that change state or show queue contents: Host, Origin and Sec-Fetch-Site are checked.
GUARDED_ROUTES = ("/prodcons", "/pubsub")
GUARDED_PREFIX = "/api/"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_NAMES = ("0.0.0.0", "[::]", "::", "*")
# What the web process exports: the series it keeps true. The loops' series (progress clock,
# reconnects, out-of-memory...) are declared in the same registry but never set here, and a
# value that is never set is a lie (taskd_redis_connected stuck at 0 fired an alert for ever).
WEB_SERIES_PREFIXES = ("taskd_web_", "process_", "python_")
WEB_SERIES = ("taskd_redis_connected", "taskd_build")
# /metrics PINGs Redis first when no request has told taskd_redis_connected for this long.
CONNECTED_FRESH_FOR = 5.0
REFUSAL_REMEMBERED = 5.0  # seconds /readyz stays 503 after a refused push (none may come)

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


def _split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host value; lower case, IPv6 in brackets, port "" when absent."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    if value.count(":") > 1:  # a bare IPv6 address (a bind value, never a valid Host)
        return f"[{value}]", ""
    name, _, port = value.partition(":")
    return name.rstrip("."), port


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServedHosts:
    """The names a `Host` header may give: the bind address (and its loopback aliases), any IP
    literal when bound to all interfaces, and --allowed-host entries ("name" = any port)."""

    names: frozenset[str]  # bind-derived names: with the bind port or no port
    port: str
    any_ip_literal: bool
    extra: frozenset[tuple[str, str]]  # (name, port or "" for any port); ("*", "") = any host

    @classmethod
    def of(cls, bind: str, allowed: tuple[str, ...] = ()) -> ServedHosts:
        """The served names of `taskd web --bind bind --allowed-host ...`."""
        host, _, port = bind.rpartition(":")
        name = _split_host(host)[0]
        names = {name}
        wildcard = name in WILDCARD_NAMES
        if wildcard or name in LOOPBACK_NAMES or name.startswith("127."):
            names.update(LOOPBACK_NAMES)
        if wildcard:  # all interfaces: this machine's own name too
            names.add(socket.gethostname().lower())
        extra = frozenset(_split_host(entry) for entry in allowed)
        return cls(frozenset(names), port, wildcard, extra)

    def refusal(self, host_header: str) -> str:
        """Empty when `host_header` names this server, else why not (the 403 reason)."""
        name, port = _split_host(host_header)
        if not name:
            return "the request has no Host header"
        if name in self.names and port in ("", self.port):
            return ""
        if self.any_ip_literal and _is_ip_literal(name):
            return ""
        if ("*", "") in self.extra or (name, "") in self.extra or (name, port) in self.extra:
            return ""
        return (
            f"Host {host_header!r} is not a name this server answers to (a DNS-rebound name "
            "looks like this); add it with --allowed-host (TASKD_WEB_ALLOWED_HOSTS)"
        )


def origin_refusal(origin: str | None, fetch_site: str | None, host_header: str) -> str:
    """Empty unless a browser sent the request from another origin, else why (the 403 reason).

    Requests without these headers (curl, siege, programs) are not from a browser page.
    `same-site` is refused too: another port of the same host is another origin.
    """
    if fetch_site and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}: the request comes from another site's page"
    if origin is None:
        return ""
    parts = urlsplit(origin.strip().lower())
    default = {"http": "80", "https": "443"}.get(parts.scheme, "")
    try:
        origin_port = str(parts.port) if parts.port is not None else default
    except ValueError:
        origin_port = "?"
    name, port = _split_host(host_header)
    origin_name = _split_host(parts.netloc.rpartition("@")[2])[0]
    if origin_name and origin_name == name and origin_port == (port or default):
        return ""
    return f"Origin {origin!r} does not match Host {host_header!r}: a cross-origin request"


class _WebSeries:
    """The process registry seen through WEB_SERIES: only the series this process keeps true."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name in WEB_SERIES or family.name.startswith(WEB_SERIES_PREFIXES):
                yield family


def web_registry() -> CollectorRegistry:
    """The registry /metrics serves in the web process."""
    view = CollectorRegistry(auto_describe=False)
    view.register(_WebSeries(metrics.registry()))
    return view


class RedisHealth:
    """taskd_redis_connected from the outcome of the web's own Redis calls.

    A reply (even an error reply) is 1; a failure to connect or to get a reply is 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.told_at = -math.inf  # monotonic time of the last outcome
        # The last push Redis refused for now (OOM, READONLY...): why, and when (monotonic)
        self._refused: tuple[str, float] | None = None

    def record(self, answered: bool) -> None:
        """Set the gauge from one call's outcome."""
        with self._lock:
            self.told_at = time.monotonic()
            metrics.REDIS_CONNECTED.set(1 if answered else 0)

    def observe(self, call: Callable[[], T], push: bool = False) -> T:
        """Run one Redis call and record its outcome; exceptions pass through.

        For a `push`, a refusal that waiting cures (out of memory, a read-only replica) is
        remembered for /readyz; a push that succeeds forgets it.
        """
        try:
            result = call()
        except (redis.RedisError, ReplicasNotConfirmed) as exc:
            # an error reply is an answer; a failure to connect or to get a reply is not
            self.record(not isinstance(exc, redis.ConnectionError | redis.TimeoutError))
            if push and (why := _refused_for_now(exc)):
                self._refused = (why, time.monotonic())
            raise
        self.record(True)
        if push:
            self._refused = None
        return result

    def refusing(self) -> str:
        """Why pushes were refused within the last REFUSAL_REMEMBERED seconds, or ""."""
        refused = self._refused
        if refused is None or time.monotonic() - refused[1] > REFUSAL_REMEMBERED:
            return ""
        return refused[0]

    def stale(self) -> bool:
        """True when no call has told the gauge for CONNECTED_FRESH_FOR seconds."""
        return time.monotonic() - self.told_at > CONNECTED_FRESH_FOR


def _refused_for_now(exc: BaseException) -> str:
    """Why Redis, answering, refused a push in a way that waiting cures; "" if it did not."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "out of memory (maxmemory reached)"
    return refusal_reason(exc)


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


@functools.lru_cache(maxsize=64)
def _listener_hosts(name: str, port: str, allowed: tuple[str, ...]) -> ServedHosts:
    """The served names of a listener at name:port (cached: one per listening socket)."""
    return ServedHosts.of(f"{name}:{port}", allowed)


def listener_refusal(environ: Mapping[str, Any], host_header: str, allowed: tuple[str, ...]) -> str:
    """Like ServedHosts.refusal, for the address the WSGI server says the request came in on.

    gunicorn puts the listening socket's address in SERVER_NAME/SERVER_PORT (an IP literal);
    anything else (a unix socket, where gunicorn copies the Host header there) is no evidence
    and gives a refusal, so only --bind and --allowed-host decide.
    """
    name, port = str(environ.get("SERVER_NAME", "")), str(environ.get("SERVER_PORT", ""))
    if not _is_ip_literal(name) or not port.isdigit():
        return "the WSGI server gave no listening address"
    return _listener_hosts(name, port, allowed).refusal(host_header)


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

    hosts = ServedHosts.of(settings.web_bind, settings.web_allowed_hosts)
    health = RedisHealth()
    exposed = web_registry()
    waits = (settings.wait_replicas, settings.wait_timeout)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.debug = False  # never the debugger: it executes code sent by the browser

    @app.before_request
    def same_origin_check() -> Response | None:
        """Refuse (403) a guarded route asked for under a foreign Host or from another origin.

        Runs before the token check: a cross-site request is refused whatever it carries.
        """
        if request.path not in GUARDED_ROUTES and not request.path.startswith(GUARDED_PREFIX):
            return None
        host = request.headers.get("Host", "")
        reason = hosts.refusal(host)
        if reason and trust_listener:
            with contextlib.suppress(Exception):  # a strange environ: keep the refusal
                if not listener_refusal(request.environ, host, settings.web_allowed_hosts):
                    reason = ""
        reason = reason or origin_refusal(
            request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), host
        )
        if not reason:
            return None
        _log.warning("web.request_refused", route=request.path, reason=reason)
        return _json(403, {"error": "request refused", "reason": reason})

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
            depth = health.observe(
                lambda: enqueue(redis_client, queue, str(elem), *waits), push=True
            )
        _log.info("web.lpush", queue=queue, task=elem, depth=depth)
        return redirect("/")

    @app.get("/pubsub")
    def pubsub() -> BaseResponse:
        elem = random.randrange(10)
        with metrics.WEB_ENQUEUE_SECONDS.time():
            receivers = health.observe(
                lambda: publish(redis_client, channel, str(elem), settings.durable, *waits),
                push=True,
            )
        _log.info("web.publish", channel=channel, message=elem, receivers=receivers)
        return redirect("/")

    @app.post("/api/tasks")
    def post_task() -> Response:
        if request.mimetype != "application/json":
            # A cross-site form or no-cors fetch can only send text/plain, form or multipart.
            given = request.headers.get("Content-Type", "")
            return _json(
                415,
                {"error": f"expected Content-Type: application/json, got {given or 'none'!r}"},
            )
        try:
            task = parse_task(request.get_data(cache=False), settings.queues)
        except BadTask as exc:
            return _json(400, {"error": str(exc)})
        if task.delay > 0:
            return _schedule(task)
        with metrics.WEB_ENQUEUE_SECONDS.time():
            depth = health.observe(
                lambda: enqueue(redis_client, task.queue, task.body, *waits), push=True
            )
        _log.info("web.enqueue", queue=task.queue, size=len(task.body), depth=depth)
        return _json(202, {"queue": task.queue, "depth": depth})

    def _schedule(task: TaskRequest) -> Response:
        """A delayed POST /api/tasks: into the queue's delayed set, due on Redis's clock."""
        with metrics.WEB_ENQUEUE_SECONDS.time():
            done = health.observe(
                lambda: enqueue_delayed(redis_client, task.queue, task.body, task.delay, *waits),
                push=True,
            )
        _log.info(
            "web.enqueue_delayed",
            queue=task.queue,
            size=len(task.body),
            delay=task.delay,
            delayed=done.delayed,
        )
        doc = {"queue": task.queue, "delay": task.delay, "due_at": done.due_at}
        return _json(202, {**doc, "delayed": done.delayed})

    @app.get("/api/queues")
    def queues() -> Response:
        rows = health.observe(
            lambda: [row.as_dict() for row in queue_statuses(redis_client, settings.queues)]
        )
        return _json(200, {"queues": rows})

    @app.get("/metrics")
    def metrics_page() -> Response:
        if health.stale():  # an idle web process still tells the truth about Redis
            with contextlib.suppress(redis.RedisError):  # recorded: the gauge tells it
                health.observe(redis_client.ping)
        payload = generate_latest(exposed)
        return Response(payload, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/healthz")
    def healthz() -> Response:
        # Liveness only: a Redis outage must not get the web process restarted (see /readyz).
        return _json(200, {"state": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            health.observe(redis_client.ping)
        except redis.RedisError as exc:
            _log.warning("web.not_ready", error=f"{type(exc).__name__}: {exc}")
            return _json(503, {"state": "not_ready", "redis": "down"})
        if refusing := health.refusing():  # Redis answers, but the last pushes were refused
            doc = {"state": "not_ready", "redis": "connected", "refusing": refusing}
            return _json(503, {**doc, "reason": f"Redis refuses pushes: {refusing}"})
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
    enable_stack_dumps()
    app = create_app(settings)
    arbiter_pid = os.getpid()
    _log.info("web.starting", bind=settings.web_bind, workers=WORKERS, threads=THREADS)
    try:
        server = _Gunicorn(app, gunicorn_options(settings))
    except SystemExit:  # gunicorn refused a setting and said why on stderr
        return exitcodes.CONFIG
    try:
        web_systemd.run(server, settings.web_bind)  # gunicorn's run(), telling systemd too
    except SystemExit as stop:  # gunicorn ends its arbiter and its workers with sys.exit
        code = stop.code
        status = code if isinstance(code, int) else (exitcodes.OK if code is None else 1)
    else:
        status = exitcodes.OK
    if os.getpid() == arbiter_pid:  # gunicorn's workers unwind through here too: stay quiet
        (_log.info if status == exitcodes.OK else _log.error)("web.stopped", exit_code=status)
    return status


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
    from daemon.config import load

    try:
        settings = load({}, env=env)
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
