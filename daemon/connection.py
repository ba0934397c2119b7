"""Redis clients with a deadline on every call, whose errors say what reached the wire.

The client library is told never to retry on its own (``Retry(NoBackoff(), 0)``): a blocking
claim that is silently re-sent after a timeout can pop a task into a socket that was just
dropped. The loops own retries (daemon/faults.py), so they know when a reply was lost.

Whether a failed command may have been applied is decided from the wire, not from error
texts: every connection taskd makes (TCP, unix, TLS, Sentinel-managed) marks the exception it
raises with whether the command's bytes had been written (`SentTracking`; read by
daemon/redis_errors.py's `maybe_applied`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from daemon import redis_url
from daemon.config import Settings
from daemon.redis_errors import REFUSED, SENT, SentinelAuthError


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
    """A client for ``redis://``, ``rediss://``, ``unix://``, Sentinel or Cluster URLs, with
    deadlines.

    Its connections are taskd's (`SentTracking`), so every error says whether the command
    was sent. Creating it does not connect; the first command does (a cluster client reads
    the slot map then: daemon/cluster.py).
    """
    target = redis_url.parse(settings.redis_url)
    if target.cluster:
        from daemon.cluster import LazyCluster  # the cluster module imports this one

        return cast(redis.Redis, LazyCluster(settings, client_name))
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
