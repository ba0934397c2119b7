"""Redis clients with a deadline on every call, and the policy for losing and regaining them.

The client library is told never to retry on its own (``Retry(NoBackoff(), 0)``): a blocking
claim that is silently re-sent after a timeout can pop a task into a socket that was just
dropped. The consume loop owns retries, so it knows when a reply was lost and reconciles.

Whether a failed command may have been applied is decided from the wire, not from error
texts: every connection taskd makes (TCP, unix, TLS, Sentinel-managed) marks the exception it
raises with whether the command's bytes had been written (`SentTracking`, `maybe_applied`).
A reconnect loop may run for days: the backoff is fed a capped failure count (`LinkState`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import AbstractBackoff, FullJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

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


class SentinelAuthError(redis.AuthenticationError):
    """A sentinel refused our AUTH (wrong, missing or unexpected sentinel password).

    redis-py's Sentinel would report it as "no master found", which looks like an outage
    and is retried for ever; raised instead so the daemon stops with exit 78.
    """


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


# What an error reply that waiting cures says about the server, by its error code.
_REFUSALS = {
    "READONLY": "a read-only replica (READONLY)",
    "LOADING": "loading its dataset (LOADING)",
    "BUSY": "busy running a script (BUSY)",
    "MISCONF": "unable to persist, refusing writes (MISCONF)",
    "NOREPLICAS": "not enough replicas for writes (NOREPLICAS)",
    "MASTERDOWN": "a replica whose master link is down (MASTERDOWN)",
    "UNBLOCKED": "changing role (UNBLOCKED)",
    "TRYAGAIN": "migrating keys (TRYAGAIN)",
    "CLUSTERDOWN": "a cluster that is down (CLUSTERDOWN)",
}


def refusal_reason(exc: BaseException) -> str:
    """Why Redis, answering, refused a command in a way waiting cures; "" if it did not answer.

    Out of memory is not one of these: the consumer drains a full Redis (see daemon/memory.py).
    """
    if not isinstance(exc, redis.ResponseError | redis.exceptions.BusyLoadingError):
        return ""
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or not is_transient(exc):
        return ""
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return _REFUSALS["LOADING"]
    if isinstance(exc, redis.ReadOnlyError):
        return _REFUSALS["READONLY"]
    code = (str(exc).split(" ", 1)[0] or type(exc).__name__).upper()
    return _REFUSALS.get(code, f"refusing commands ({code})")


def maybe_applied(exc: BaseException) -> bool:
    """Could the command that raised `exc` have been carried out by the server anyway?

    Decided by what happened on the wire, as recorded by taskd's connection classes
    (`SentTracking`): an error reply means refused; an exception raised before any byte of
    the command was written (connect, handshake, health check, a pool checkout, "max number
    of clients reached", Sentinel's MasterNotFoundError) means never sent; once the write
    began, a timeout or a broken connection leaves it unknown (the reply may be what was
    lost). An exception that did not pass through those classes gets the conservative
    answer of its type.
    """
    if isinstance(exc, redis.ResponseError | redis.exceptions.BusyLoadingError):
        return False
    if getattr(exc, REFUSED, False):
        return False
    sent = getattr(exc, SENT, None)
    if sent is not None:
        return bool(sent)
    text = str(exc).lower()
    if "connecting to" in text or "timeout connecting" in text:
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError)


def fatal_reason(exc: BaseException, url: str) -> str:
    """One line explaining why `exc` stops the daemon, naming the (redacted) URL."""
    where = redis_url.redact(url)
    text = str(exc).strip() or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, SentinelAuthError):
        hint = (
            "expected the sentinels' own password (their requirepass) in the URL's "
            "sentinel_password=, --sentinel-password-file or TASKD_SENTINEL_PASSWORD"
        )
    elif (
        isinstance(exc, redis.AuthenticationError) or "wrongpass" in lowered or "noauth" in lowered
    ):
        hint = "expected a valid username/password in the redis URL"
    elif "unknown command" in lowered:
        hint = "expected Redis 6.2 or newer (taskd needs BLMOVE and Lua scripting)"
    elif "db index" in lowered:
        hint = "expected a database index the server has (see its `databases` setting)"
    elif (
        "noperm" in lowered
        or "can't run this command" in lowered  # a command inside a script, under an ACL
        or isinstance(exc, redis.exceptions.NoPermissionError)
    ):
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


# Attributes set on an exception by the connection classes below (see `maybe_applied`).
SENT = "taskd_sent"  # False: raised before any byte of the command was written
REFUSED = "taskd_refused"  # True: the server answered the command with an error reply


def _mark(exc: BaseException, attribute: str, value: bool, force: bool) -> None:
    """Record on `exc` what happened on the wire; the outermost phase that knows wins."""
    if force or not hasattr(exc, attribute):
        with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
            setattr(exc, attribute, value)


class SentTracking:
    """Connection mixin: every exception says whether the command's bytes were written.

    Connecting, the handshake (AUTH, SELECT, CLIENT SETNAME) and the health-check PING come
    before the command: what they raise is marked ``taskd_sent = False``, overriding any
    mark set deeper (the handshake's own writes are not the command's). Once the command's
    write has begun, anything raised is ``taskd_sent = True`` (maybe partly written), and
    an exception raised while reading an error reply (including redis-py's Sentinel
    turning READONLY into "The previous master is now a slave") is ``taskd_refused``.
    """

    _sock: Any

    def connect(self) -> None:
        try:
            cast(Any, super()).connect()
        except BaseException as exc:
            _mark(exc, SENT, False, force=True)
            raise

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            cast(Any, super()).connect_check_health(*args, **kwargs)
        except BaseException as exc:
            _mark(exc, SENT, False, force=True)
            raise

    def check_health(self) -> None:
        try:
            cast(Any, super()).check_health()
        except BaseException as exc:
            _mark(exc, SENT, False, force=True)
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:  # as redis-py does, but outside the "written" phase
            self.connect()
        if check_health:
            self.check_health()
        try:
            cast(Any, super()).send_packed_command(command, check_health=False)
        except BaseException as exc:
            _mark(exc, SENT, True, force=False)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return cast(Any, super()).read_response(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, redis.ResponseError) or isinstance(
                exc.__context__, redis.ResponseError
            ):
                _mark(exc, REFUSED, True, force=False)
            _mark(exc, SENT, True, force=False)
            raise


class TaskdConnection(SentTracking, redis.Connection):
    """TCP connection that records what was sent."""


class TaskdUnixConnection(SentTracking, redis.UnixDomainSocketConnection):
    """Unix socket connection that records what was sent."""


class TaskdSSLConnection(SentTracking, redis.SSLConnection):
    """TLS connection that records what was sent."""


class TaskdSentinelConnection(SentTracking, SentinelManagedConnection):
    """Sentinel-managed connection (master looked up on connect) that records what was sent."""


class TaskdSentinelSSLConnection(SentTracking, SentinelManagedSSLConnection):
    """Sentinel-managed TLS connection that records what was sent."""


class UnsentOnCheckout:
    """Pool mixin: whatever getting a connection raises happened before any command was sent.

    The pool connects, and may find a fresh connection unusable ("Connection not ready")
    without the connection itself raising.
    """

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return cast(Any, super()).get_connection(*args, **kwargs)
        except BaseException as exc:
            _mark(exc, SENT, False, force=True)
            raise


class TaskdConnectionPool(UnsentOnCheckout, redis.ConnectionPool):
    """The pool of every taskd client (TCP, unix, TLS)."""


class TaskdSentinelPool(UnsentOnCheckout, SentinelConnectionPool):
    """The pool of a Sentinel-managed taskd client."""


class TaskdSentinel(Sentinel):
    """A Sentinel whose refused AUTH is reported as such (exit 78), not as "no master"."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """Like redis-py's, but a sentinel refusing our credentials is not skipped silently.

        Sentinels that are down or time out are skipped (an outage, retried); when no
        sentinel named a master and one of them refused AUTH, that refusal is the error.
        """
        errors: list[str] = []
        refusal: redis.AuthenticationError | None = None
        for number, sentinel in enumerate(self.sentinels):
            where = _address(sentinel)
            try:
                masters = sentinel.sentinel_masters()
            except redis.AuthenticationError as exc:
                refusal = SentinelAuthError(f"sentinel {where} refused authentication: {_why(exc)}")
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                forced = getattr(self, "_force_master_ip", None)  # redis-py >= 5.0.1
                return (forced if forced is not None else state["ip"]), state["port"]
        if refusal is not None:
            raise refusal
        detail = f" ({'; '.join(errors)})" if errors else ""
        raise MasterNotFoundError(f"no master found for {service_name!r}{detail}")


def _why(exc: redis.AuthenticationError) -> str:
    """The refusal in words: NOAUTH replies vary (and redis-py's HELLO makes them cryptic)."""
    if getattr(exc, "status_code", "") == "NOAUTH" or "noauth" in str(exc).lower():
        return "it requires a password and none was sent (NOAUTH)"
    return str(exc)


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


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

    Its connections are taskd's (`SentTracking`), so every error says whether the command
    was sent. Creating it does not connect; the first command does.
    """
    target = redis_url.parse(settings.redis_url)
    kwargs = client_kwargs(settings, client_name)
    if target.sentinel:
        return _sentinel_client(settings, target, kwargs)
    if target.scheme == "unix":
        for tcp_only in ("socket_keepalive", "socket_keepalive_options"):
            kwargs.pop(tcp_only, None)
        pool = TaskdConnectionPool(connection_class=TaskdUnixConnection, path=target.path, **kwargs)
        return _owning(pool)
    host, port = target.hosts[0]
    tls = bool(kwargs.pop("ssl", False))
    connection_class = TaskdSSLConnection if tls else TaskdConnection
    pool = TaskdConnectionPool(connection_class=connection_class, host=host, port=port, **kwargs)
    return _owning(pool)


def _owning(pool: redis.ConnectionPool) -> redis.Redis:
    """A client that closes `pool` when closed (what Redis.from_pool does in redis-py >= 5.0.1)."""
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def sentinel_kwargs(settings: Settings, target: redis_url.RedisTarget) -> dict[str, Any]:
    """How to talk to the sentinels themselves: connect deadline, no retry, their password.

    The password comes from --sentinel-password-file / TASKD_SENTINEL_PASSWORD, else from
    the URL's sentinel_password= (with sentinel_username= for an ACL user).
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.connect_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    password = settings.sentinel_password or target.sentinel_password
    if password:
        kwargs["password"] = password
        kwargs["username"] = target.sentinel_username
    if target.tls:
        kwargs.update(tls_kwargs(settings))
    return kwargs


def _sentinel_client(
    settings: Settings, target: redis_url.RedisTarget, kwargs: dict[str, Any]
) -> redis.Redis:
    sentinel = TaskdSentinel(
        list(target.hosts), sentinel_kwargs=sentinel_kwargs(settings, target), **kwargs
    )
    connection_class = TaskdSentinelSSLConnection if target.tls else TaskdSentinelConnection
    client: redis.Redis = sentinel.master_for(
        target.master_name,
        connection_pool_class=TaskdSentinelPool,
        connection_class=connection_class,
        **kwargs,
    )
    return client


def make_backoff(settings: Settings) -> AbstractBackoff:
    """Exponential backoff with full jitter, capped: the reconnect policy of every loop."""
    return FullJitterBackoff(cap=settings.backoff_cap, base=settings.backoff_base)


# The backoff is fed at most this many failures: 2**32 x any base is past any cap, while a
# count that grows for days would overflow the exponential (OverflowError near 1,024).
BACKOFF_STEPS = 32


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
    failures: int = 0  # attempts that failed in this outage: the true count, for the logs
    down_since: float | None = None
    reconnects: int = 0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)
    # Reachable but refusing writes for a reason of its own (e.g. "out of memory"); "" = none.
    refusing: str = ""
    # maxmemory-policy read after the last (re)connect; "" = not known yet.
    eviction_policy: str = ""
    # The current outage is Redis answering with error replies that waiting cures (READONLY,
    # LOADING, BUSY...): reachable, but refusing our commands. "" = unreachable, or no outage.
    rejecting: str = ""
    rejecting_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns the delay before the next attempt."""
        with self._lock:
            rejecting = refusal_reason(exc)
            if self.connected is not False:
                self.down_since = self.clock()
                self.log.warning(
                    "redis.disconnected",
                    error=f"{type(exc).__name__}: {exc}",
                    first_contact=self.connected is None,
                    **({"refusing": rejecting} if rejecting else {}),
                )
                self.connected = False
                self._notify(False)
            if rejecting and not self.rejecting:
                self.rejecting_since = self.clock()
            self.rejecting = rejecting
            if not rejecting:
                self.rejecting_since = None
            self.failures += 1
            return float(self.backoff.compute(min(self.failures, BACKOFF_STEPS)))

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
            self.rejecting, self.rejecting_since = "", None
            self._notify(True)
            return was_down

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)
