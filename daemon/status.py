"""What `taskd status`, the web API and the metrics scrape show: read-only views of queue keys.

Processing lists are found from the workers registry (``Q:workers``), never by scanning the
keyspace: a read costs two pipelined round trips for any number of queues, whatever else the
database holds. (A processing list whose worker is not registered is invisible to peer
recovery too; taskd never leaves one: a worker registers before its first claim and is
forgotten only once its list is empty.)

The age of the oldest pending task is the head of the pending list (``LINDEX Q -1``:
consumers take from the right) looked up in the stamps set taskd's producers write
(``ZSCORE Q:stamps sha1(head)``), against Redis's TIME in the same round trip. None when the
queue is empty or the head has no stamp (pushed by a plain LPUSH producer, or stamped more
than a week ago): an unknown age is never reported as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from daemon.cluster import is_cluster
from daemon.dead_letters import parse_dead_letter
from daemon.keys import QueueKeys, shard_names, unserved_shard
from daemon.reliable import digest

# Workers read per queue and read: bounds one read's size even when dead workers pile up
# (peers forget them on recovery): the most recently seen are read.
MAX_WORKERS = 1000


@dataclass
class QueueStatus:
    """Depths of one queue, the workers that serve it and the server's eviction policy."""

    queue: str
    pending: int
    processing: int
    delayed: int
    dead: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    # Redis's maxmemory-policy ("" = could not be read); a warning when it can lose tasks.
    eviction_policy: str = ""
    eviction_warning: str = ""
    # Seconds since the oldest pending task was enqueued (None: empty queue, or not stamped).
    oldest_age_seconds: float | None = None
    # A queue spread over shards (--shards): each shard's own status; the fields above sum them.
    shards: list[dict[str, Any]] = field(default_factory=list)
    # On a Redis Cluster: host:port of the primary serving the queue's slot, as last known.
    node: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


_FIRST = 5  # replies per queue in the first round trip


def _replies(pipe: Any, optional: Callable[[int], bool]) -> list[Any]:
    """The pipeline's replies; an error raises unless it is the reply of an `optional` command.

    The age's commands (LINDEX, ZSCORE, TIME) are optional: an ACL user set up before taskd
    read ages (no +lindex +zscore) still gets its depths, and the age is unknown.
    """
    replies = pipe.execute(raise_on_error=False)
    for n, reply in enumerate(replies):
        if isinstance(reply, Exception) and not optional(n):
            raise reply
    return list(replies)


def _known(reply: Any) -> Any:
    """A reply, or None in place of an error reply (an optional command refused)."""
    return None if isinstance(reply, Exception) else reply


def _age(score: Any, now: Any) -> float | None:
    """Seconds from a stamp's score to Redis's TIME reply; None when there is no stamp."""
    if score is None or now is None:
        return None
    seconds, micros = now
    return max(0.0, round(int(seconds) + int(micros) / 1e6 - float(score), 3))


def queue_statuses(client: Any, queues: Sequence[str]) -> list[QueueStatus]:
    """Depths, workers and oldest-task ages of `queues` in two round trips (module docstring)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        keys = QueueKeys(queue)
        pipe.llen(keys.pending)
        pipe.zcard(keys.delayed)
        pipe.llen(keys.dead)
        pipe.zrange(keys.workers, -MAX_WORKERS, -1, withscores=True)  # newest; ZRANGE only (ACL)
        pipe.lindex(keys.pending, -1)  # the oldest pending task, the next one claimed
    first = _replies(pipe, optional=lambda n: n % _FIRST == 4) if queues else []
    registered: list[list[tuple[str, float]]] = [
        sorted((_text(w), float(score)) for w, score in first[_FIRST * i + 3])
        for i in range(len(queues))
    ]
    heads: list[bytes | None] = [_known(first[_FIRST * i + 4]) for i in range(len(queues))]
    pipe = client.pipeline(transaction=False)
    optional: set[int] = set()  # positions of the age's commands (ZSCORE, TIME)
    for queue, workers, head in zip(queues, registered, heads, strict=True):
        keys = QueueKeys(queue)
        for name, _ in workers:
            pipe.exists(keys.alive(name))
            pipe.llen(keys.processing(name))
        if head is not None:
            optional.add(len(pipe.command_stack))
            pipe.zscore(keys.stamps, digest(_bytes(head)))
    stamped = any(h is not None for h in heads)
    separate = is_cluster(client)  # a cluster pipeline refuses TIME (no key, no node)
    if stamped and not separate:
        optional.add(len(pipe.command_stack))
        pipe.time()
    pipelined = stamped and not separate
    replies = _replies(pipe, optional.__contains__) if any(registered) or stamped else []
    now = _known(replies[-1]) if pipelined else None
    if stamped and separate:
        now = _cluster_time(client, queues[0])
    answers = iter(replies)
    nodes = [_node_of(client, queue) if separate else "" for queue in queues]
    rows: list[QueueStatus] = []
    for i, (queue, workers) in enumerate(zip(queues, registered, strict=True)):
        table: list[dict[str, Any]] = [
            {
                "worker": name,
                "alive": bool(next(answers)),
                "processing": int(next(answers)),
                "last_seen": seen,
            }
            for name, seen in workers
        ]
        age = _age(_known(next(answers)), now) if heads[i] is not None else None
        pending, delayed, dead = first[_FIRST * i : _FIRST * i + 3]
        rows.append(
            QueueStatus(
                queue=queue,
                pending=int(pending),
                processing=sum(r["processing"] for r in table),
                delayed=int(delayed),
                dead=int(dead),
                workers=table,
                oldest_age_seconds=age,
                node=nodes[i],
            )
        )
    return rows


def _node_of(client: Any, queue: str) -> str:
    """host:port of the primary serving `queue` (the cluster client's slot map: no command)."""
    try:
        node = client.get_node_from_key(queue)
    except (redis.RedisError, AttributeError):
        return ""
    return f"{node.host}:{node.port}"


def summed(queue: str, rows: Sequence[QueueStatus]) -> QueueStatus:
    """The status of one queue spread over the shards `rows`: depths summed, each worker once
    (alive if alive on every shard, holding what it holds on all), the oldest age of all."""
    if len(rows) == 1 and rows[0].queue == queue:
        return rows[0]
    workers: dict[str, dict[str, Any]] = {}
    for row in rows:
        for w in row.workers:
            seen = workers.setdefault(w["worker"], {**w, "processing": 0})
            seen["alive"] = seen["alive"] and w["alive"]
            seen["processing"] += w["processing"]
            seen["last_seen"] = max(seen["last_seen"], w["last_seen"])
    ages = [r.oldest_age_seconds for r in rows if r.oldest_age_seconds is not None]
    return QueueStatus(
        queue=queue,
        pending=sum(r.pending for r in rows),
        processing=sum(r.processing for r in rows),
        delayed=sum(r.delayed for r in rows),
        dead=sum(r.dead for r in rows),
        workers=sorted(workers.values(), key=lambda w: str(w["worker"])),
        oldest_age_seconds=max(ages) if ages else None,
        shards=[r.as_dict() for r in rows],
    )


def sharded_statuses(client: Any, queues: Sequence[str], shards: int) -> list[QueueStatus]:
    """One status per queue of `queues`, each summing its `shards` (all read in one go)."""
    rows = iter(queue_statuses(client, [n for q in queues for n in shard_names(q, shards)]))
    return [summed(queue, [next(rows) for _ in range(shards)]) for queue in queues]


def unserved_tasks(client: Any, queues: Sequence[str], shards: int) -> dict[str, int] | None:
    """Tasks waiting on the shard past the `shards` served of each queue (keys.unserved_shard),
    by shard name, only those holding some; one pipelined round trip. None when the ACL
    user may not read those names (then nobody can tell); other errors raise."""
    names = [unserved_shard(queue, shards) for queue in queues]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    replies = pipe.execute(raise_on_error=False) if names else []
    if any(isinstance(r, redis.exceptions.NoPermissionError) for r in replies):
        return None
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return {name: int(n) for name, n in zip(names, replies, strict=True) if int(n)}


def _cluster_time(client: Any, queue: str) -> Any:
    """TIME of the node serving `queue` (None when refused): the clock its stamps came from."""
    try:
        return client.time(target_nodes=client.get_node_from_key(queue))
    except redis.RedisError:
        return None


def eviction_warning(policy: str) -> str:
    """What an operator must be told about `policy` ("" for noeviction; a note if unknown)."""
    from daemon import memory

    if policy == memory.SAFE_POLICY:
        return ""
    if not policy:
        return (
            "maxmemory-policy could not be read (CONFIG and INFO refused): "
            f"make sure it is {memory.SAFE_POLICY}"
        )
    return f"maxmemory-policy is {policy}, not {memory.SAFE_POLICY}: {memory.consequence(policy)}"


def queue_status(client: Any, queue: str, shards: int = 1) -> QueueStatus:
    """One queue's status for `taskd status` and the web API, with the eviction policy."""
    from daemon import memory

    row = sharded_statuses(client, [queue], shards)[0]
    row.eviction_policy = memory.eviction_policy(client)
    row.eviction_warning = eviction_warning(row.eviction_policy)
    return row


def dead_letters(client: Any, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters, decoded; damaged entries are shown, never raised on."""
    entries = client.lrange(QueueKeys(queue).dead, 0, limit - 1)
    return [parse_dead_letter(e) for e in entries]


def dead_letters_of(client: Any, shards: Sequence[str], limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters of a queue over its `shards`, each naming its shard."""
    if len(shards) == 1:
        return dead_letters(client, shards[0], limit)
    docs = [{**doc, "shard": s} for s in shards for doc in dead_letters(client, s, limit)]
    docs.sort(key=lambda doc: _number(doc.get("failed_at")), reverse=True)
    return docs[:limit]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
