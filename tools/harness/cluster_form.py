"""Forming a Redis Cluster by hand, and putting given slots on given primaries.

``redis-cli --cluster create`` refuses fewer than 3 primaries; these helpers do what it does,
for any number: each primary is given its slot ranges (CLUSTER ADDSLOTSRANGE) and a config
epoch of its own, the first node MEETs the others (on their explicit cluster bus ports), and
each replica REPLICATEs its primary. Used by `tools.harness.cluster.RedisCluster`; the slot
helpers by the scale-out benchmark (scripts/bench_cluster.py), which puts shard i of a queue
on primary i mod P.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

if TYPE_CHECKING:
    from tools.harness.redis_server import RedisServer

SLOTS = REDIS_CLUSTER_HASH_SLOTS  # 16384
Ranges = list[tuple[int, int]]  # inclusive (first, last) slot ranges


def slot_of(key: str) -> int:
    """The cluster slot of `key` (its hash tag, if it has one)."""
    return key_slot(key.encode())


def spread(keys: Sequence[str], primaries: int) -> dict[int, int]:
    """Slot -> primary index putting key i on primary i mod `primaries` (keys in other slots)."""
    placement: dict[int, int] = {}
    for i, key in enumerate(keys):
        slot = slot_of(key)
        if placement.setdefault(slot, i % primaries) != i % primaries:
            raise ValueError(f"{key!r} shares slot {slot} with a key placed elsewhere")
    return placement


def owners(primaries: int, placement: Mapping[int, int] | None = None) -> list[int]:
    """The primary index of every slot: even contiguous ranges (as redis-cli gives them),
    except the slots of `placement` (slot -> primary index)."""
    if primaries < 1:
        raise ValueError("a cluster needs at least one primary")
    owner = [slot * primaries // SLOTS for slot in range(SLOTS)]
    for slot, primary in (placement or {}).items():
        if not 0 <= primary < primaries:
            raise ValueError(f"slot {slot}: no primary {primary} among {primaries}")
        owner[slot] = primary
    return owner


def slot_ranges(primaries: int, placement: Mapping[int, int] | None = None) -> list[Ranges]:
    """Each primary's slots as inclusive ranges (the arguments of CLUSTER ADDSLOTSRANGE)."""
    ranges: list[Ranges] = [[] for _ in range(primaries)]
    owner = owners(primaries, placement)
    start = 0
    for slot in range(1, SLOTS + 1):
        if slot == SLOTS or owner[slot] != owner[start]:
            ranges[owner[start]].append((start, slot - 1))
            start = slot
    return ranges


def _call(node: RedisServer, *command: str | int) -> object:
    client = node.client(socket_timeout=5, socket_connect_timeout=5)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def node_id(node: RedisServer) -> str:
    """The node's cluster id (CLUSTER MYID)."""
    reply = _call(node, "CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def form(
    primaries: Sequence[RedisServer],
    replicas: Sequence[RedisServer],
    ranges: Sequence[Ranges],
    bus_port: Callable[[RedisServer], int],
) -> None:
    """Make fresh cluster-enabled nodes one cluster: slots, epochs, MEET, then replicas.

    Replica k follows primary k mod len(primaries). Returns at once: the caller waits for
    cluster_state:ok (and the replicas' sync) as after ``redis-cli --cluster create``.
    """
    for epoch, (node, own) in enumerate(zip(primaries, ranges, strict=True), start=1):
        if own:
            _call(node, "CLUSTER", "ADDSLOTSRANGE", *(bound for r in own for bound in r))
        _call(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)  # distinct: no epoch collisions
    first, *others = [*primaries, *replicas]
    for node in others:
        _call(first, "CLUSTER", "MEET", "127.0.0.1", node.port, bus_port(node))
    if not replicas:
        return
    ids = [node_id(node) for node in primaries]
    deadline = time.monotonic() + 20
    for k, node in enumerate(replicas):
        while True:  # REPLICATE needs the primary known to the replica (gossip, ~1 s)
            try:
                _call(node, "CLUSTER", "REPLICATE", ids[k % len(primaries)])
                break
            except redis.ResponseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)


def place_slots(nodes: Iterable[RedisServer], placement: Mapping[int, RedisServer]) -> None:
    """Put each (empty) slot of `placement` on its primary: CLUSTER SETSLOT <slot> NODE <id>
    sent to every primary among `nodes` (replicas refuse it: they learn it by gossip), then
    CLUSTER BUMPEPOCH on each new owner, so that its claim outranks the old owner's everywhere.
    The slots must hold no keys."""
    primaries = [n for n in nodes if _role(n) == "master"]
    ids = {id(primary): node_id(primary) for primary in placement.values()}
    for slot, primary in placement.items():
        for node in primaries:
            _call(node, "CLUSTER", "SETSLOT", slot, "NODE", ids[id(primary)])
    for primary in {id(p): p for p in placement.values()}.values():
        _call(primary, "CLUSTER", "BUMPEPOCH")


def _role(node: RedisServer) -> str:
    reply = _call(node, "ROLE")
    assert isinstance(reply, list)
    role = reply[0]
    return role.decode() if isinstance(role, bytes) else str(role)


def slot_served_by(node: RedisServer, slot: int) -> int | None:
    """The port of the primary that `node` believes serves `slot` (CLUSTER SLOTS), or None."""
    reply = _call(node, "CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    for first, last, primary, *_ in reply:
        if int(first) <= slot <= int(last):
            return int(primary[1])
    return None
