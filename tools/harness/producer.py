"""A steady producer thread pushing numbered tasks straight to Redis, through faults."""

from __future__ import annotations

import threading

import redis


class Producer(threading.Thread):
    """LPUSHes `<prefix><n>` to `queue` every `every` s; a task counts once LPUSH returned.

    A push that fails is not counted and not retried (the producer saw the error): `pushed`
    is exactly what a correct consumer must handle.
    """

    def __init__(self, port: int, queue: str, every: float = 0.05, prefix: str = "p") -> None:
        super().__init__(daemon=True, name=f"harness-producer-{prefix}")
        self.client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        self.queue, self.every, self.prefix = queue, every, prefix
        self.pushed: list[str] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.wait(self.every):
            body = f"{self.prefix}{n}"
            try:
                self.client.lpush(self.queue, body)
            except redis.RedisError:
                self.errors += 1
                continue
            self.pushed.append(body)
            n += 1

    def finish(self) -> list[str]:
        """Stop pushing; the bodies pushed."""
        self.halt.set()
        self.join(5)
        self.client.close()
        return self.pushed
