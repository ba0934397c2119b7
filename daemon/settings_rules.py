"""Cross-field rules of Settings: each a small named check returning its one-line error, or None.

Single values are checked by their kinds (daemon/settings_spec.py); these are the rules that
need more than one value, or that name a part of a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon import redis_url
from daemon.keys import QueueKeys, hash_tag, shard_names

if TYPE_CHECKING:
    from daemon.settings import Settings


def redis_url_parses(s: Settings) -> str | None:
    """The URL is one taskd can connect to (the message hides its password)."""
    try:
        redis_url.parse(s.redis_url)
    except redis_url.RedisUrlError as exc:
        return str(exc)
    return None


def client_certificate_has_its_key(s: Settings) -> str | None:
    """Mutual TLS needs both halves."""
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        return "--tls-cert-file and --tls-key-file: expected both (mutual TLS) or neither"
    return None


def socket_outlasts_the_claim(s: Settings) -> str | None:
    """A blocking claim must not be cut off by its own socket deadline."""
    if s.socket_timeout <= s.block_timeout:
        return (
            f"--socket-timeout={s.socket_timeout:g}: expected more than the block timeout "
            f"({s.block_timeout:g} s), or a blocking claim would be cut off by its own socket"
        )
    return None


def heartbeat_outlasts_the_claim(s: Settings) -> str | None:
    """A worker waiting in a claim still refreshes its heartbeat in time."""
    if s.heartbeat_ttl <= s.block_timeout:
        return (
            f"--heartbeat-ttl={s.heartbeat_ttl:g}: expected more than the block timeout "
            f"({s.block_timeout:g} s), or idle workers would look dead"
        )
    return None


def stall_outlasts_the_socket(s: Settings) -> str | None:
    """An idle claim (block timeout + socket margin) is progress, not a stall."""
    if s.stall_timeout <= s.socket_timeout:
        return (
            f"--stall-timeout={s.stall_timeout:g}: expected more than the socket timeout "
            f"({s.socket_timeout:g} s = block timeout + margin), or an idle claim looks stalled"
        )
    return None


def backoff_cap_is_at_least_its_base(s: Settings) -> str | None:
    """The reconnect backoff grows from its base up to its cap."""
    if s.backoff_cap < s.backoff_base:
        return (
            f"--backoff-cap={s.backoff_cap:g}: "
            f"expected at least --backoff-base ({s.backoff_base:g})"
        )
    return None


def retry_cap_is_at_least_its_base(s: Settings) -> str | None:
    """The retry delay of a failed task grows from its base up to its cap."""
    if s.retry_cap < s.retry_base:
        return f"--retry-cap={s.retry_cap:g}: expected at least --retry-base ({s.retry_base:g})"
    return None


def queue_names_have_no_spaces(s: Settings) -> str | None:
    """A queue name is one word: it is a Redis key and part of the key of its lists."""
    for queue in s.queues:
        if any(c.isspace() for c in queue):
            return f"--queue={queue!r}: expected a queue name without spaces"
    return None


def no_queue_is_another_queues_key(s: Settings) -> str | None:
    """Serving `q:dead` next to `q` would consume q's dead letters as tasks."""
    served = s.served_queues
    if len(set(served)) < len(served):
        twice = next(q for q in served if served.count(q) > 1)
        return (
            f"--queue={twice!r}: served twice (a queue named twice, or also the shard of "
            f"another with --shards={s.shards}); expected each queue once"
        )
    for queue in served:
        for other in served:
            if other != queue and QueueKeys(other).owns(queue):
                return (
                    f"--queue={queue!r}: that is a key of queue {other!r} (its dead letters, "
                    "retries or processing lists); expected a queue name that is not another "
                    "queue's key"
                )
    return None


def _on_cluster(s: Settings) -> bool:
    try:
        return redis_url.parse(s.redis_url).cluster
    except redis_url.RedisUrlError:
        return False  # redis_url_parses says why


def cluster_queues_have_hash_tags(s: Settings) -> str | None:
    """On a Redis Cluster every key of a queue must share one slot (its scripts touch
    several at once): the queue name carries a hash tag. Single-node names are unchanged."""
    if not _on_cluster(s):
        return None
    for queue in s.served_queues:
        if hash_tag(queue) is None:
            return (
                f"--queue={queue}: on a Redis Cluster a queue needs a hash tag, e.g. "
                f"{{{queue}}}, so its keys share one slot"
            )
    return None


def shards_have_slots_of_their_own(s: Settings) -> str | None:
    """Each shard of a queue hashes by a tag of its own, or they would all share one slot."""
    for queue in s.queues:
        names = shard_names(queue, s.shards)
        tags = {hash_tag(name) for name in names}
        if len(names) > 1 and (None in tags or len(tags) < len(names)):
            return (
                f"--queue={queue} --shards={s.shards}: its braces leave the shards one hash "
                "tag; expected a name with one hash tag, e.g. {orders}, or no braces"
            )
    return None


def cluster_durable_channels_have_hash_tags(s: Settings) -> str | None:
    """``--durable`` makes a queue of each channel (``<channel>:durable``): same rule."""
    if not (s.durable and _on_cluster(s)):
        return None
    for channel in s.channels:
        if hash_tag(channel) is None:
            return (
                f"--channel={channel} --durable: on a Redis Cluster a durable channel needs "
                f"a hash tag, e.g. {{{channel}}}, so the keys of its list share one slot"
            )
    return None


def sharded_pubsub_has_no_patterns(s: Settings) -> str | None:
    """Redis has no sharded patterns (SSUBSCRIBE takes channels only, there is no PSSUBSCRIBE)."""
    if s.pubsub == "sharded" and s.patterns:
        return (
            f"--pattern={s.patterns[0]} with --pubsub sharded: there are no sharded patterns "
            "(SSUBSCRIBE takes channel names only); expected --channel, or --pubsub auto or "
            "classic for patterns"
        )
    return None


# Checked by the verbs that take --queue / --channel (daemon/commands.py): a verb that takes
# no queue is not refused for the default queue name.
QUEUE_RULES: tuple[Callable[[Settings], str | None], ...] = (cluster_queues_have_hash_tags,)
CHANNEL_RULES: tuple[Callable[[Settings], str | None], ...] = (
    cluster_durable_channels_have_hash_tags,
)

Rule = Callable[["Settings"], "str | None"]
RULES: tuple[Rule, ...] = (
    redis_url_parses,
    client_certificate_has_its_key,
    socket_outlasts_the_claim,
    heartbeat_outlasts_the_claim,
    stall_outlasts_the_socket,
    backoff_cap_is_at_least_its_base,
    retry_cap_is_at_least_its_base,
    queue_names_have_no_spaces,
    shards_have_slots_of_their_own,
    no_queue_is_another_queues_key,
    sharded_pubsub_has_no_patterns,
)
