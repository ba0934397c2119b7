"""Which pub/sub taskd speaks (``--pubsub``), and on a cluster which node serves what.

``classic``: PUBLISH / SUBSCRIBE / PSUBSCRIBE, on a single node and on a cluster (the cluster
bus forwards every message to every node, but PUBLISH's reply counts only the subscribers of
the node it was sent to). ``sharded``: SPUBLISH / SSUBSCRIBE (Redis >= 7): a message stays in
its channel's shard, and SPUBLISH's reply counts that shard's subscribers. ``auto``: classic
on a single node or under Sentinel; on a cluster whose nodes have SPUBLISH, publishers send
SPUBLISH and subscribers listen with both SSUBSCRIBE and SUBSCRIBE, so they also receive what
classic publishers send. The choice is made once, at the first connection, from the node
serving the (first) channel's slot: ``resolve``.

A sharded channel lives on the node serving its slot, so a sharded subscription to several
channels may need one connection per node (`plan_links`); SSUBSCRIBE takes the channels of
one slot at a time, so a link holds one SSUBSCRIBE per slot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import redis
from redis.crc import key_slot

from daemon.cluster import is_cluster, node_client, pool_for
from daemon.redis_errors import RedisFatalError

CLASSIC, SHARDED, AUTO = "classic", "sharded", "auto"
BOTH = "sharded+classic"  # what an auto subscriber on a cluster with SSUBSCRIBE listens with


class ShardedUnavailable(RedisFatalError, redis.ResponseError):
    """``--pubsub sharded`` on a server without SPUBLISH/SSUBSCRIBE (Redis < 7): exit 78."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"--pubsub sharded: redis {where} has no SPUBLISH/SSUBSCRIBE (sharded pub/sub "
            "needs Redis 7 or newer); expected --pubsub classic or auto"
        )


def _where(client: Any, channel: str) -> str:
    """host:port of the node serving `channel` (for messages)."""
    if is_cluster(client):
        node = client.get_node_from_key(channel)
        return f"{node.host}:{node.port}"
    kwargs = getattr(client.connection_pool, "connection_kwargs", {})
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return "server"


def has_sharded(client: Any, channel: str) -> bool | None:
    """Does the node serving `channel` know SPUBLISH and SSUBSCRIBE (COMMAND INFO)?

    None when it does not say (COMMAND refused, e.g. by an ACL). Read on a raw connection:
    redis-py's parser of COMMAND INFO fails on the nil entry of an unknown command.
    """
    pool = node_client(client, channel).connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("COMMAND", "INFO", "SPUBLISH", "SSUBSCRIBE")
        reply = conn.read_response()
    except redis.ResponseError:
        pool.release(conn)
        return None
    except BaseException:
        conn.disconnect()
        pool.release(conn)
        raise
    pool.release(conn)
    return isinstance(reply, list) and len(reply) == 2 and all(r for r in reply)


def resolve(requested: str, client: Any, channel: str) -> str:
    """The kind one publisher uses: CLASSIC or SHARDED (raises ShardedUnavailable).

    For a subscriber, SHARDED from ``auto`` means BOTH (`listens_with`).
    """
    if requested == CLASSIC:
        return CLASSIC
    if requested == AUTO and not is_cluster(client):
        return CLASSIC  # a single node or Sentinel: exactly as before --pubsub existed
    known = has_sharded(client, channel)
    if requested == SHARDED:
        if known is False:
            raise ShardedUnavailable(_where(client, channel))
        return SHARDED
    return SHARDED if known else CLASSIC


def listens_with(requested: str, resolved: str) -> str:
    """What a subscriber subscribes with: CLASSIC, SHARDED or BOTH."""
    if resolved == SHARDED and requested == AUTO:
        return BOTH
    return resolved


def is_sharded_missing(exc: BaseException) -> bool:
    """An error reply saying the server does not know SPUBLISH / SSUBSCRIBE."""
    text = str(exc).lower()
    named = "'spublish'" in text or "'ssubscribe'" in text
    return isinstance(exc, redis.ResponseError) and "unknown command" in text and named


class PublishKind:
    """The kind one producer (taskd publish, the web) publishes with, resolved once."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self._kind: str | None = None

    def kind(self, client: Any, channel: str) -> str:
        if self._kind is None:
            self._kind = resolve(self.requested, client, channel)
        return self._kind


@dataclasses.dataclass(frozen=True)
class LinkPlan:
    """One pub/sub connection: its node's pool and what it subscribes to."""

    pool: Any
    node: str  # host:port on a cluster, "" on a single node
    channels: tuple[str, ...] = ()  # SUBSCRIBE
    patterns: tuple[str, ...] = ()  # PSUBSCRIBE
    shard_groups: tuple[tuple[str, ...], ...] = ()  # one SSUBSCRIBE per slot

    @property
    def confirmations(self) -> set[tuple[str, str]]:
        """The (type, name) confirmations Redis sends back for this link's subscriptions."""
        return (
            {("subscribe", c) for c in self.channels}
            | {("psubscribe", p) for p in self.patterns}
            | {("ssubscribe", c) for group in self.shard_groups for c in group}
        )

    def merged(self, more: LinkPlan) -> LinkPlan:
        """This link with `more`'s subscriptions added (sent on the same connection)."""
        return dataclasses.replace(
            self,
            channels=self.channels + more.channels,
            patterns=self.patterns + more.patterns,
            shard_groups=self.shard_groups + more.shard_groups,
        )

    def without_shard(self, channel: str) -> LinkPlan:
        """This link once the server ended its sharded subscription to `channel`."""
        groups = (tuple(c for c in group if c != channel) for group in self.shard_groups)
        return dataclasses.replace(self, shard_groups=tuple(g for g in groups if g))


def wanted(
    listen: str, channels: tuple[str, ...], patterns: tuple[str, ...]
) -> set[tuple[str, str]]:
    """Every (confirmation type, name) a subscriber listening with `listen` must hold."""
    names = set()
    if listen in (CLASSIC, BOTH):
        names |= {("subscribe", c) for c in channels}
    if listen in (SHARDED, BOTH):
        names |= {("ssubscribe", c) for c in channels}
    return names | {("psubscribe", p) for p in patterns}


def plan_links(
    client: Any, sharded: tuple[str, ...], classic: tuple[str, ...], patterns: tuple[str, ...]
) -> list[LinkPlan]:
    """The connections for these subscriptions (the slot map read before, by the caller).

    `sharded` channels: one link per node serving some of their slots, one SSUBSCRIBE per
    slot. `classic` channels and `patterns` (any node hears every classic message) go on the
    link of the first sharded channel's node, or alone on the node of the first name's slot.
    """
    plans: dict[str, LinkPlan] = {}
    slots: dict[str, dict[int, list[str]]] = {}
    for channel in sharded:
        node = _node_name(client, channel)
        if node not in plans:
            plans[node] = LinkPlan(pool_for(client, channel), node)
        slots.setdefault(node, {}).setdefault(key_slot(channel.encode()), []).append(channel)
    for node, groups in slots.items():
        shard_groups = tuple(tuple(group) for group in groups.values())
        plans[node] = dataclasses.replace(plans[node], shard_groups=shard_groups)
    if classic or patterns:
        home = next(iter(plans), None)  # dicts keep the order: the first sharded channel's
        if home is None:
            first = (classic or patterns)[0]
            home = _node_name(client, first)
            plans[home] = LinkPlan(pool_for(client, first), home)
        plans[home] = dataclasses.replace(plans[home], channels=classic, patterns=patterns)
    return list(plans.values())


def _node_name(client: Any, key: str) -> str:
    if not is_cluster(client):
        return ""
    node = client.get_node_from_key(key)
    return f"{node.host}:{node.port}"
