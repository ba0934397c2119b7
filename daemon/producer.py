"""Putting tasks into Redis: the same keys and deadlines the consumers use.

Producers only LPUSH onto the queue (as the seed's producers did), so any existing producer
keeps working next to these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from daemon.keys import QueueKeys, durable_queue

BATCH = 1000


def _as_bytes(body: bytes | str) -> bytes:
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _batches(bodies: Iterable[bytes | str], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for body in bodies:
        batch.append(_as_bytes(body))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def enqueue(client: Any, queue: str, body: bytes | str) -> int:
    """Push one task; returns the queue depth after the push."""
    return int(client.lpush(QueueKeys(queue).pending, _as_bytes(body)))


def enqueue_many(client: Any, queue: str, bodies: Iterable[bytes | str]) -> int:
    """Push tasks in order (the first given is consumed first), in pipelined batches.

    Returns how many were pushed. Each batch is one LPUSH: all of it is stored or none.
    """
    pushed = 0
    key = QueueKeys(queue).pending
    for batch in _batches(bodies, BATCH):
        client.lpush(key, *batch)
        pushed += len(batch)
    return pushed


def publish(client: Any, channel: str, body: bytes | str, durable: bool = False) -> int:
    """Publish one message; returns how many subscribers received it (0: it is gone).

    With `durable`, the message is also pushed onto the channel's durable list (one atomic
    MULTI), where `taskd subscribe --durable` consumes it reliably.
    """
    if not durable:
        return int(client.publish(channel, _as_bytes(body)))
    pipe = client.pipeline(transaction=True)
    pipe.lpush(durable_queue(channel), _as_bytes(body))
    pipe.publish(channel, _as_bytes(body))
    return int(pipe.execute()[1])
