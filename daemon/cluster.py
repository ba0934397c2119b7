"""Redis Cluster clients (``redis+cluster://``): redis-py's `RedisCluster` with taskd's deadlines.

Every node's connections are taskd's (`SentTracking`: each error says whether the command's
bytes were written), with the same socket and connect timeouts, keepalive, health check and
handshake deadline as a single-node client. The cluster client is told never to retry on its
own (a timed-out BLMOVE silently re-sent could pop a task into a dropped socket); MOVED and
ASK are redirects, not retries: the command was refused by a node that does not serve the
slot, so following them is safe. After a connection error the client refreshes its slot map
on the next command, which is how a promoted replica is found.

A queue's keys all share one slot (its name carries a hash tag, daemon/settings_rules.py), so
everything written on one connection at once (daemon/pipelined.py) goes to the pool of that
slot's node: `pool_for`.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from daemon import redis_url
from daemon.config import Settings
from daemon.connection import (
    TaskdConnection,
    TaskdConnectionPool,
    TaskdSSLConnection,
    client_kwargs,
)
from daemon.redis_errors import SENT


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, LazyCluster))


class LazyCluster:
    """A cluster client made on first use, as a single-node client connects on first use.

    redis-py's cluster client reads the slot map when it is made, and raises when no node
    answers: a consumer started while the cluster is down would crash instead of waiting
    like a single-node one. Until the map is read, every use raises a ConnectionError
    marked as not sent (an outage the loops' fault policy retries); scripts can be
    registered and a connect hook set before (both are kept for the real client).
    """

    def __init__(self, settings: Settings, client_name: str | None) -> None:
        self._settings = settings
        self._client_name = client_name
        self._client: RedisCluster | None = None
        self._on_connect: Any = None

    def _real(self) -> RedisCluster:
        if self._client is None:
            try:
                client = make_cluster_client(self._settings, self._client_name)
            except (RedisClusterException, redis.ConnectionError, redis.TimeoutError) as exc:
                if isinstance(exc.__cause__, redis.AuthenticationError):
                    raise exc.__cause__ from exc  # refused credentials: exit 78, not an outage
                error = redis.ConnectionError(f"no cluster node answered: {exc}")
                setattr(error, SENT, False)
                raise error from exc
            client.user_on_connect_func = self._on_connect
            self._client = client
        return self._client

    @property
    def user_on_connect_func(self) -> Any:
        return self._client.user_on_connect_func if self._client else self._on_connect

    @user_on_connect_func.setter
    def user_on_connect_func(self, hook: Any) -> None:
        self._on_connect = hook
        if self._client is not None:
            self._client.user_on_connect_func = hook

    def get_encoder(self) -> Encoder:
        return Encoder("utf-8", "strict", False)  # what make_cluster_client's client uses

    def register_script(self, script: Any) -> Script:
        return Script(cast(Any, self), script)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


def _connection_class(tls: bool, health_check_interval: float, connect_timeout: float) -> type:
    """A SentTracking connection class with the health check and handshake deadline built in.

    redis-py's cluster client passes neither `health_check_interval` nor a connect hook of
    ours through unchanged (it drops the first and wraps the second), so both live here.
    """
    base: Any = TaskdSSLConnection if tls else TaskdConnection

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["health_check_interval"] = health_check_interval
        base.__init__(self, *args, **kwargs)

    def on_connect(self: Any) -> None:
        if self._sock is not None:  # AUTH, CLIENT SETNAME under the connect deadline
            self._sock.settimeout(connect_timeout)
        base.on_connect(self)
        if self._sock is not None:
            self._sock.settimeout(self.socket_timeout)

    name = "TaskdClusterSSLConnection" if tls else "TaskdClusterConnection"
    return type(name, (base,), {"__init__": __init__, "on_connect": on_connect})


def make_cluster_client(settings: Settings, client_name: str | None = None) -> RedisCluster:
    """A cluster client for ``redis+cluster://`` / ``rediss+cluster://``; connects at once
    (it reads the slot map from the first node of the URL that answers)."""
    target = redis_url.parse(settings.redis_url)
    kwargs = client_kwargs(settings, client_name)
    for dropped in ("db", "retry", "redis_connect_func", "health_check_interval"):
        kwargs.pop(dropped, None)
    # TLS is our connection class's (an SSLConnection): redis-py's `ssl=True` would be
    # passed on to each connection, which takes no such argument
    tls = bool(kwargs.pop("ssl", False))
    if not tls:
        for tls_only in [k for k in kwargs if k.startswith("ssl_")]:
            kwargs.pop(tls_only)
    connection_class = _connection_class(
        tls, settings.health_check_interval, settings.connect_timeout
    )
    host, port = target.hosts[0]
    first = f"[{host}]" if ":" in host else host
    return RedisCluster(
        # `url` (no credentials in it) makes redis-py build each node's pool from
        # connection_pool_class with our connection class; the other hosts are startup nodes
        url=f"redis://{first}:{port}",
        startup_nodes=[ClusterNode(h, p) for h, p in target.hosts[1:]],
        retry=Retry(NoBackoff(), 0),
        connection_class=connection_class,
        connection_pool_class=TaskdConnectionPool,
        require_full_coverage=True,
        **kwargs,
    )


def node_client(client: Any, key: str) -> Any:
    """`client` itself, or on a cluster a plain client of the primary serving `key`'s slot:
    for what must share one connection with a write of that slot (MULTI/EXEC, WAIT after
    the push). A redirect (the slot moving) is then an error reply, not followed."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def pool_for(client: Any, key: str) -> Any:
    """The connection pool that serves `key`: the client's own, or on a cluster the pool of
    the primary of `key`'s slot (as the cluster client knows it now)."""
    if not is_cluster(client):
        return client.connection_pool
    node = client.get_node_from_key(key)
    return client.get_redis_connection(node).connection_pool


def refresh_slots(client: Any) -> None:
    """After a redirect or a broken connection seen outside the cluster client: re-read the
    slot map, so the next `pool_for` finds the slot's node now (best effort)."""
    if is_cluster(client):
        with contextlib.suppress(redis.RedisError):
            client.nodes_manager.initialize()
