"""What `taskd status`, the web API and the metrics scrape show: read-only views of queue keys.

Processing lists are found from the workers registry (``Q:workers``), never by scanning the
keyspace: a read costs two pipelined round trips for any number of queues, whatever else the
database holds. (A processing list whose worker is not registered is invisible to peer
recovery too; taskd never leaves one: a worker registers before its first claim and is
forgotten only once its list is empty.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from daemon.keys import QueueKeys
from daemon.reliable import parse_dead_letter

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def queue_statuses(client: Any, queues: Sequence[str]) -> list[QueueStatus]:
    """Depths and workers of `queues` in two round trips (see the module docstring)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        keys = QueueKeys(queue)
        pipe.llen(keys.pending)
        pipe.zcard(keys.delayed)
        pipe.llen(keys.dead)
        pipe.zrange(keys.workers, -MAX_WORKERS, -1, withscores=True)  # newest; ZRANGE only (ACL)
    first = pipe.execute() if queues else []
    registered: list[list[tuple[str, float]]] = [
        sorted((_text(w), float(score)) for w, score in first[4 * i + 3])
        for i in range(len(queues))
    ]
    pipe = client.pipeline(transaction=False)
    for queue, workers in zip(queues, registered, strict=True):
        keys = QueueKeys(queue)
        for name, _ in workers:
            pipe.exists(keys.alive(name))
            pipe.llen(keys.processing(name))
    answers = iter(pipe.execute() if any(registered) else [])
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
        pending, delayed, dead = first[4 * i : 4 * i + 3]
        rows.append(
            QueueStatus(
                queue=queue,
                pending=int(pending),
                processing=sum(r["processing"] for r in table),
                delayed=int(delayed),
                dead=int(dead),
                workers=table,
            )
        )
    return rows


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


def queue_status(client: Any, queue: str) -> QueueStatus:
    """One queue's status for `taskd status` and the web API, with the eviction policy."""
    from daemon import memory

    row = queue_statuses(client, [queue])[0]
    row.eviction_policy = memory.eviction_policy(client)
    row.eviction_warning = eviction_warning(row.eviction_policy)
    return row


def dead_letters(client: Any, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters, decoded; damaged entries are shown, never raised on."""
    entries = client.lrange(QueueKeys(queue).dead, 0, limit - 1)
    return [parse_dead_letter(e) for e in entries]
