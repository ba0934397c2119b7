"""A Redis made full on purpose: writes refused as OOM (noeviction), and kept that way."""

from __future__ import annotations

import redis

CHUNK = 64 * 1024


def used_memory(client: redis.Redis) -> int:
    """INFO memory's used_memory, in bytes."""
    return int(client.info("memory")["used_memory"])


def fill_until_refused(
    client: redis.Redis, key: str = "filler", chunk: int = CHUNK, most: int = 1000
) -> bool:
    """RPUSH `chunk`-byte strings to `key` until Redis refuses one as OOM (True), at most `most`."""
    payload = b"x" * chunk
    for _ in range(most):
        try:
            client.rpush(key, payload)
        except redis.exceptions.OutOfMemoryError:
            return True
    return False


def make_full(
    client: redis.Redis, below: int, key: str = "filler", chunk: int = CHUNK, most: int = 1000
) -> tuple[int, int]:
    """Fill until refused, then set maxmemory `below` bytes under what is used, so freed client
    buffers or a few drained tasks do not make room again. (used, maxmemory); RuntimeError when
    Redis never refused (maxmemory not set, or an eviction policy)."""
    if not fill_until_refused(client, key, chunk, most):
        raise RuntimeError(f"Redis never refused {most} writes of {chunk} bytes (not full)")
    used = used_memory(client)
    limit = max(1, used - below)
    client.config_set("maxmemory", str(limit))
    return used, limit
