"""Every Redis key name taskd uses, in one place (see docs/design.md, "Redis keys of queue Q").

A queue name with a hash tag (``{orders}``) keeps all of its keys in one Redis Cluster slot,
because every key below starts with the queue name itself.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_QUEUE = "task:prodcons:queue"
DEFAULT_CHANNEL = "task:pubsub:channel"
MAX_SHARDS = 128  # --shards: a few per primary; an idle consumer blocks on each in turn


def hash_tag(name: str) -> str | None:
    """The hash tag of key `name` as Redis Cluster reads it: what lies between the first
    ``{`` and the next ``}``, if not empty; None when the whole name is hashed."""
    start = name.find("{")
    end = name.find("}", start + 1) if start >= 0 else -1
    return name[start + 1 : end] if end > start + 1 else None


def shard_names(queue: str, shards: int) -> tuple[str, ...]:
    """The queues one logical queue is spread over (``--shards``): the queue itself when 1.

    Shard i of ``P{T}S`` is ``P{T:i}S`` and of an untagged ``Q`` is ``{Q:i}``: each shard's
    own hash tag, so each shard is one slot of its own (all of a shard's keys in it), and the
    shards of a queue spread over a cluster's primaries. The same names on a single Redis.
    """
    if shards == 1:
        return (queue,)
    tag = hash_tag(queue)
    if tag is None:
        return tuple(f"{{{queue}:{i}}}" for i in range(shards))
    start = queue.find("{")
    end = start + 1 + len(tag)
    return tuple(f"{queue[: start + 1]}{tag}:{i}{queue[end:]}" for i in range(shards))


def unserved_shard(queue: str, shards: int) -> str:
    """The first shard of `queue` past the `shards` served: tasks there mean producers were
    given more shards than the consumers (or shards, and the consumers none)."""
    if shards == 1:
        return shard_names(queue, 2)[0]
    return shard_names(queue, shards + 1)[shards]


def durable_queue(channel: str) -> str:
    """The list that `publish --durable` also pushes each message of `channel` onto."""
    return f"{channel}:durable"


@dataclass(frozen=True)
class QueueKeys:
    """The key layout of one queue ``Q``."""

    queue: str

    @property
    def pending(self) -> str:
        """List of pending tasks: producers LPUSH, consumers take from the right (FIFO)."""
        return self.queue

    def processing(self, worker: str) -> str:
        """List of tasks `worker` has claimed and not yet acked."""
        return f"{self.queue}:processing:{worker}"

    @property
    def processing_prefix(self) -> str:
        """Prefix of every processing list, for scanning them."""
        return f"{self.queue}:processing:"

    @property
    def workers(self) -> str:
        """Sorted set of workers known for the queue, scored by last heartbeat time."""
        return f"{self.queue}:workers"

    def alive(self, worker: str) -> str:
        """A worker's heartbeat key (string with TTL); gone means the worker is dead.

        Its value is the owner record (JSON, daemon/ownership.py) of the one process that
        consumes with that worker id.
        """
        return f"{self.queue}:alive:{worker}"

    @property
    def attempts(self) -> str:
        """Hash of failed-attempt counts of tasks in flight, by task digest."""
        return f"{self.queue}:attempts"

    @property
    def delayed(self) -> str:
        """Sorted set of tasks waiting for their retry time (score = due time)."""
        return f"{self.queue}:delayed"

    @property
    def stamps(self) -> str:
        """Sorted set of enqueue times (Redis clock) by task digest, written by taskd's producers.

        Member = SHA-1 hex of the body (as Q:attempts), so identical bodies share one stamp;
        it is what `taskd status` and the metrics read the oldest pending task's age from.
        """
        return f"{self.queue}:stamps"

    @property
    def dead(self) -> str:
        """List of dead letters (JSON documents)."""
        return f"{self.queue}:dead"

    def owns(self, key: str) -> bool:
        """Whether `key` is one of this queue's own keys (other than the pending list itself).

        A second queue by such a name would consume this queue's dead letters, retries...
        """
        own = (self.workers, self.attempts, self.delayed, self.dead, self.stamps)
        return key in own or key.startswith((self.processing_prefix, f"{self.queue}:alive:"))
