"""What Redis does when its memory is full, and what that means for taskd.

taskd keeps every task in Redis lists; a server that evicts keys can drop them without a
trace. Only ``noeviction`` keeps them (writes are refused instead, and taskd keeps draining
with allow-oom scripts). The policy is read with CONFIG GET, or from INFO when an ACL user
may not run CONFIG.
"""

from __future__ import annotations

from typing import Any

import redis

from daemon import metrics
from daemon.lua import ALLOW_OOM

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
    value (``maxmemory_policy``) and is usually allowed. Connection errors propagate: an
    unreachable server is not an unknown policy.
    """
    try:
        reply = client.config_get("maxmemory-policy")
        value = _text(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy"))
        if value:
            return value
    except redis.ResponseError:
        pass
    try:
        return _text(client.info("memory").get("maxmemory_policy"))
    except redis.ResponseError:
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


class MemoryState:
    """Whether Redis refuses writes as out of memory; each change is logged once.

    Redis full is not Redis down: the link stays connected, `link.refusing` says why writes
    are refused (for /readyz), and the gauge taskd_redis_out_of_memory is 1 meanwhile.
    """

    REASON = "out of memory (maxmemory reached)"

    def __init__(self, link: Any, log: Any) -> None:
        self.link = link
        self.log = log
        self.full = False

    def update(self, full: bool) -> None:
        """Record what the last plain write showed (refused as OOM, or carried out)."""
        if full == self.full:
            return
        self.full = full
        self.link.refusing = self.REASON if full else ""
        metrics.REDIS_OUT_OF_MEMORY.set(1 if full else 0)
        if full:
            self.log.warning(
                "redis.out_of_memory",
                note="Redis refuses writes (maxmemory reached); taskd keeps draining with "
                "allow-oom scripts and polls the queue instead of blocking on it",
            )
        else:
            self.log.info("redis.memory_ok", note="Redis accepts writes again")

    def forget(self) -> None:
        """Redis became unreachable: whether it is full is unknown now (no log line).

        The next refused write after the reconnect says "out of memory" again; a stale
        "refusing" or a gauge stuck at 1 during an outage would tell operators the wrong story.
        """
        if not self.full and not self.link.refusing:
            return
        self.full = False
        self.link.refusing = ""
        metrics.REDIS_OUT_OF_MEMORY.set(0)


def report_policy(policy: str, link: Any, log: Any) -> None:
    """Publish the policy read after a (re)connect: link, gauge, one warning when unsafe
    or unreadable (once per connection episode: the caller reads it once per episode)."""
    link.eviction_policy = policy
    metrics.REDIS_EVICTION_POLICY.clear()
    if policy:
        metrics.REDIS_EVICTION_POLICY.labels(policy=policy).set(1)
    if not policy:
        log.warning(
            "redis.eviction_policy_unknown",
            expected=SAFE_POLICY,
            note="neither CONFIG GET maxmemory-policy nor INFO memory is allowed to this "
            "Redis user: taskd cannot tell whether Redis may evict its tasks or heartbeats; "
            f"make sure maxmemory-policy is {SAFE_POLICY} (or grant +info)",
        )
    elif policy != SAFE_POLICY:
        log.warning(
            "redis.eviction_policy_unsafe",
            policy=policy,
            expected=SAFE_POLICY,
            effect=consequence(policy),
            note=f"set maxmemory-policy {SAFE_POLICY} on the Redis server taskd uses",
        )


FLAGS_PROBE = ALLOW_OOM + "return 1"  # the flag line daemon/lua prepends, on a no-op


def supports_script_flags(client: Any) -> bool:
    """Whether the server takes `#!lua flags=` scripts (Redis >= 7.0; 6.2 cannot parse them).

    Asked by loading a one-line flagged script (SCRIPT LOAD, which taskd needs anyway and
    may run while Redis is full), not by INFO's version: INFO is optional in the shipped ACL,
    and reading "version 0" would run the plain scripts, refused under OOM. Where SCRIPT LOAD
    is forbidden, INFO's version decides.
    """
    try:
        client.script_load(FLAGS_PROBE)
        return True
    except redis.exceptions.NoPermissionError:
        return server_major_version(client) >= 7
    except redis.ResponseError:  # "Unexpected" shebang / compile error: a pre-7.0 server
        return False


def server_major_version(client: Any) -> int:
    """Redis's major version from INFO server; 0 when INFO is not allowed or unreadable."""
    try:
        version = _text(client.info("server").get("redis_version"))
        return int(version.split(".", 1)[0])
    except (redis.ResponseError, ValueError):
        return 0
