"""What Redis does when its memory is full, and what that means for taskd.

taskd keeps every task in Redis lists; a server that evicts keys can drop them without a
trace. Only ``noeviction`` keeps them (writes are refused instead, and taskd keeps draining
with allow-oom scripts). The policy is read with CONFIG GET, or from INFO when an ACL user
may not run CONFIG.
"""

from __future__ import annotations

from typing import Any

import redis

SAFE_POLICY = "noeviction"

# What each family of policies does to taskd's keys (for the log line and the docs).
_CONSEQUENCES = {
    "allkeys": "Redis may evict any key when memory is full, including pending and processing "
    "lists: tasks are lost without a trace",
    "volatile": "Redis evicts keys with a TTL first: worker heartbeats, so live workers look "
    "dead and their tasks are recovered and run twice",
}


def eviction_policy(client: Any) -> str:
    """The server's maxmemory-policy; "" when neither CONFIG nor INFO may be read.

    CONFIG is often denied to application users by ACL (NOPERM); INFO memory carries the same
    value (``maxmemory_policy``) and is usually allowed.
    """
    try:
        reply = client.config_get("maxmemory-policy")
        value = _text(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy"))
        if value:
            return value
    except redis.RedisError:
        pass
    try:
        return _text(client.info("memory").get("maxmemory_policy"))
    except redis.RedisError:
        return ""


def consequence(policy: str) -> str:
    """One sentence on what `policy` does to taskd ("" for noeviction or unknown)."""
    if not policy or policy == SAFE_POLICY:
        return ""
    family = policy.split("-", 1)[0]
    return _CONSEQUENCES.get(family, "Redis may evict taskd's keys when memory is full")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)
