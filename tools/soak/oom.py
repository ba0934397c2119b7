"""Filling Redis to maxmemory for the `oom` fault."""

from __future__ import annotations

from typing import Any

from tools.soak.settings import OOM_CHUNK, OOM_FILLER_KEY


def used_memory(client: Any) -> int:
    """Bytes Redis says it uses (INFO memory)."""
    return int(client.info("memory")["used_memory"])


def make_full(client: Any, below: int) -> tuple[int, int]:
    """Fill until Redis refuses a write as OOM, then keep it full: maxmemory `below` bytes
    under the memory used. Returns (used, maxmemory); raises RuntimeError if never refused."""
    if not fill(client):
        raise RuntimeError("Redis never refused the filler (maxmemory not reached)")
    used = used_memory(client)
    limit = max(1, used - below)
    client.config_set("maxmemory", str(limit))
    return used, limit


def fill(client: Any, most: int = 512) -> bool:
    """Append filler chunks until Redis refuses one as OOM (True), at most `most` of them."""
    import redis

    chunk = b"x" * OOM_CHUNK
    for _ in range(most):
        try:
            client.rpush(OOM_FILLER_KEY, chunk)
        except redis.exceptions.OutOfMemoryError:
            return True
    return False
