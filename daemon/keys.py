"""Every Redis key name taskd uses, in one place (see docs/design.md, "Redis keys of queue Q").

A queue name with a hash tag (``{orders}``) keeps all of its keys in one Redis Cluster slot,
because every key below starts with the queue name itself.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_QUEUE = "task:prodcons:queue"
DEFAULT_CHANNEL = "task:pubsub:channel"


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
