"""The bench task as a Dramatiq actor: ``dramatiq bench_peers.dramatiq_app -p 1 -Q bench``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench_peers import URL, work

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def task(sent_at: float | None = None) -> None:
    """The bench task."""
    work(sent_at)
