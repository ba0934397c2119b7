"""Redis clients with a deadline on every call, and the policy for losing and regaining them.

The client library is told never to retry on its own (``Retry(NoBackoff(), 0)``): a blocking
claim that is silently re-sent after a timeout can pop a task into a socket that was just
dropped. The consume loop owns retries, so it knows when a reply was lost and reconciles.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import AbstractBackoff, FullJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from daemon import redis_url
from daemon.config import ConfigError, Settings

# Errors that retrying cannot fix: the daemon stops with exit 78 and one line instead.
_FATAL_MESSAGES = (
    "unknown command",
    "db index is out of range",
    "invalid db index",
    "wrongpass",
    "noauth",
    "wrongtype",
    "noperm",
)
# Connection errors that no reconnect can cure: TLS trust and protocol mismatches.
_FATAL_CONNECT_MESSAGES = (
    "certificate verify failed",
    "wrong version number",
    "unknown ca",
    "bad certificate",
    "certificate required",
    "hostname mismatch",
)
# Response errors that mean "the server is changing state, try again soon".
_TRANSIENT_MESSAGES = (
    "unblocked",
    "loading",
    "masterdown",
    "tryagain",
    "clusterdown",
    "readonly",
    "busy",  # a long script or MODULE command is running
    "misconf",  # the server cannot persist and refuses writes until it can
    "noreplicas",  # min-replicas-to-write not met
    "noscript",  # script cache flushed (restart, SCRIPT FLUSH): reloaded on the next call
)


class RedisFatalError(ConfigError):
    """Redis refuses us for a reason that reconnecting will not change (exit 78)."""


def is_transient(exc: BaseException) -> bool:
    """True when waiting and reconnecting can cure `exc` (network, restart, failover)."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return not any(m in str(exc).lower() for m in _FATAL_CONNECT_MESSAGES)
    if isinstance(
        exc,
        redis.ReadOnlyError
        | redis.exceptions.BusyLoadingError
        | redis.exceptions.OutOfMemoryError  # maxmemory reached: waits until memory is freed
        | redis.exceptions.NoScriptError,
    ):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).lower().startswith(_TRANSIENT_MESSAGES)
    return False


def maybe_applied(exc: BaseException) -> bool:
    """Could the command that raised `exc` have been carried out by the server anyway?

    An error reply (READONLY, LOADING, OOM, BUSY...) means it was refused, and a failure to
    connect means it was never sent; a timeout or a broken connection after sending leaves
    it unknown (the reply may be what was lost).
    """
    if isinstance(exc, redis.ResponseError | redis.exceptions.BusyLoadingError):
        return False
    text = str(exc).lower()
    if "connecting to" in text or "timeout connecting" in text:
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError)


def fatal_reason(exc: BaseException, url: str) -> str:
    """One line explaining why `exc` stops the daemon, naming the (redacted) URL."""
    where = redis_url.redact(url)
    text = str(exc).strip() or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, redis.AuthenticationError) or "wrongpass" in lowered or "noauth" in lowered:
        hint = "expected a valid username/password in the redis URL"
    elif "unknown command" in lowered:
        hint = "expected Redis 6.2 or newer (taskd needs BLMOVE and Lua scripting)"
    elif "db index" in lowered:
        hint = "expected a database index the server has (see its `databases` setting)"
    elif "noperm" in lowered or isinstance(exc, redis.exceptions.NoPermissionError):
        hint = (
            "expected an ACL user allowed the taskd commands, keys and channels "
            "(conf/redis-acl.conf)"
        )
    elif any(m in lowered for m in _FATAL_CONNECT_MESSAGES):
        hint = (
            "expected a server certificate signed by the CA of --tls-ca-file (and a client "
            "certificate the server accepts, for mutual TLS)"
        )
    elif "wrongtype" in lowered:
        hint = "expected the queue keys to be lists/sets of taskd; another program uses that name"
    else:
        hint = "expected a Redis server that accepts taskd's commands"
    return f"redis {where}: {text}; {hint}"


def keepalive_options(settings: Settings) -> dict[int, int]:
    """TCP keepalive with explicit timings, plus TCP_USER_TIMEOUT where the OS has it."""
    options: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", settings.keepalive_idle),
        ("TCP_KEEPINTVL", settings.keepalive_interval),
        ("TCP_KEEPCNT", settings.keepalive_count),
        ("TCP_USER_TIMEOUT", int(settings.socket_timeout * 1000)),
    ):
        constant = getattr(socket, name, None)
        if constant is not None:
            options[constant] = value
    return options


def handshake_with_deadline(timeout: float) -> Callable[[Any], None]:
    """The connection set-up (AUTH, SELECT, CLIENT SETNAME) under the connect deadline.

    redis-py would run it under the socket timeout (block timeout + margin); on a flow that
    is black-holed from its first byte that would delay every reconnect attempt that long.
    """

    def connect(connection: Any) -> None:
        connection._sock.settimeout(timeout)
        connection.on_connect()
        if connection._sock is not None:
            connection._sock.settimeout(connection.socket_timeout)

    return connect


def client_kwargs(settings: Settings, client_name: str | None = None) -> dict[str, Any]:
    """Keyword arguments shared by every client taskd makes (deadlines, no silent retry)."""
    target = redis_url.parse(settings.redis_url)
    kwargs: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": settings.redis_password or target.password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(settings),
        "health_check_interval": settings.health_check_interval,
        "retry": Retry(NoBackoff(), 0),
        "client_name": client_name,
        "redis_connect_func": handshake_with_deadline(settings.connect_timeout),
    }
    if target.tls:
        kwargs.update(tls_kwargs(settings))
    return kwargs


def tls_kwargs(settings: Settings) -> dict[str, Any]:
    """TLS with certificate and host name verification, unless explicitly turned off."""
    return {
        "ssl": True,
        "ssl_cert_reqs": "none" if settings.tls_insecure else "required",
        "ssl_check_hostname": not settings.tls_insecure,
        "ssl_ca_certs": settings.tls_ca_file or None,
        "ssl_certfile": settings.tls_cert_file or None,
        "ssl_keyfile": settings.tls_key_file or None,
    }


def make_client(settings: Settings, client_name: str | None = None) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or Sentinel URLs, with deadlines.

    Creating it does not connect; the first command does.
    """
    target = redis_url.parse(settings.redis_url)
    kwargs = client_kwargs(settings, client_name)
    if target.sentinel:
        sentinel_kwargs = {
            "socket_timeout": settings.connect_timeout,
            "socket_connect_timeout": settings.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if target.tls:
            sentinel_kwargs.update(tls_kwargs(settings))
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(target.master_name, **kwargs)
    if target.scheme == "unix":
        for tcp_only in ("socket_keepalive", "socket_keepalive_options"):
            kwargs.pop(tcp_only, None)
        return redis.Redis(unix_socket_path=target.path, **kwargs)
    host, port = target.hosts[0]
    return redis.Redis(host=host, port=port, **kwargs)


def make_backoff(settings: Settings) -> AbstractBackoff:
    """Exponential backoff with full jitter, capped: the reconnect policy of every loop."""
    return FullJitterBackoff(cap=settings.backoff_cap, base=settings.backoff_base)


@dataclass
class LinkState:
    """Whether Redis is reachable; logs each state change once, not once per attempt.

    `failed()` returns how long to wait before the next attempt, from the injected backoff;
    the clock is injected too, so tests drive it without sleeping.
    """

    backoff: AbstractBackoff
    log: Any
    clock: Callable[[], float] = time.monotonic
    connected: bool | None = None  # None: not tried yet
    failures: int = 0
    down_since: float | None = None
    reconnects: int = 0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)
    # Reachable but refusing writes for a reason of its own (e.g. "out of memory"); "" = none.
    refusing: str = ""
    # maxmemory-policy read after the last (re)connect; "" = not known yet.
    eviction_policy: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns the delay before the next attempt."""
        with self._lock:
            if self.connected is not False:
                self.down_since = self.clock()
                self.log.warning(
                    "redis.disconnected",
                    error=f"{type(exc).__name__}: {exc}",
                    first_contact=self.connected is None,
                )
                self.connected = False
                self._notify(False)
            self.failures += 1
            return float(self.backoff.compute(self.failures))

    def succeeded(self) -> bool:
        """Record a successful call; True when this ended an outage."""
        if self.connected:  # the hot path: nothing changes, no lock needed
            return False
        with self._lock:
            if self.connected:
                return False
            was_down = self.connected is False
            if was_down:
                outage = self.clock() - (self.down_since or self.clock())
                self.reconnects += 1
                self.log.info(
                    "redis.reconnected", outage_seconds=round(outage, 3), attempts=self.failures
                )
            else:
                self.log.info("redis.connected")
            self.connected = True
            self.failures = 0
            self.down_since = None
            self._notify(True)
            return was_down

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)
