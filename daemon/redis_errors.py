"""What a Redis error means: cured by waiting (transient), fatal (exit 78), maybe applied.

Pure functions of the exception, shared by every loop, producer and the web: the fault policy
(daemon/faults.py) decides what to do with their answers. Whether a failed command may have
been applied is decided from the wire, not from error texts: taskd's connection classes
(daemon/connection.py, `SentTracking`) mark each exception with whether the command's bytes
had been written (`SENT`) and whether the server answered with an error reply (`REFUSED`).
"""

from __future__ import annotations

from typing import Literal

import redis

from daemon import redis_url
from daemon.config import ConfigError

# Attributes set on an exception by taskd's connection classes (see `maybe_applied`).
SENT = "taskd_sent"  # False: raised before any byte of the command was written
REFUSED = "taskd_refused"  # True: the server answered the command with an error reply

# Connection errors that no reconnect can cure: TLS trust and protocol mismatches.
_FATAL_CONNECT_MESSAGES = (
    "certificate verify failed",
    "wrong version number",
    "unknown ca",
    "bad certificate",
    "certificate required",
    "hostname mismatch",
)
# Response errors that mean "the server is changing state, try again soon".
_TRANSIENT_MESSAGES = (
    "unblocked",
    "loading",
    "masterdown",
    "tryagain",
    "clusterdown",
    "readonly",
    "busy",  # a long script or MODULE command is running
    "misconf",  # the server cannot persist and refuses writes until it can
    "noreplicas",  # min-replicas-to-write not met
    "noscript",  # script cache flushed (restart, SCRIPT FLUSH): reloaded on the next call
)


class RedisFatalError(ConfigError):
    """Redis refuses us for a reason that reconnecting will not change (exit 78)."""


class SentinelAuthError(redis.AuthenticationError):
    """A sentinel refused our AUTH (wrong, missing or unexpected sentinel password).

    redis-py's Sentinel would report it as "no master found", which looks like an outage
    and is retried for ever; raised instead so the daemon stops with exit 78.
    """


# Redis Cluster states that waiting cures: redis-py raises them with the code cut off the
# message ("The cluster is down"), so they are known by type. A slot not covered, or no node
# reachable for the slot map, is an outage (no answer); the others are refusals.
_CLUSTER_REFUSALS = {
    redis.exceptions.ClusterDownError: "CLUSTERDOWN",
    redis.exceptions.TryAgainError: "TRYAGAIN",
    redis.exceptions.AskError: "MOVED",  # MovedError too: redirected more than redis-py follows
}


def _cluster_unreachable(exc: BaseException) -> bool:
    """A cluster client's "no answer": a slot no live node serves, or no node to ask."""
    if isinstance(exc, redis.exceptions.SlotNotCoveredError):
        return True
    return isinstance(exc, redis.exceptions.RedisClusterException) and (
        "cannot be connected" in str(exc) or "not covered" in str(exc)
    )


def _cluster_code(exc: BaseException) -> str:
    return next((c for t, c in _CLUSTER_REFUSALS.items() if isinstance(exc, t)), "")


def is_transient(exc: BaseException) -> bool:
    """True when waiting and reconnecting can cure `exc` (network, restart, failover)."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if _cluster_code(exc) or _cluster_unreachable(exc):
        return True
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return not any(m in str(exc).lower() for m in _FATAL_CONNECT_MESSAGES)
    if isinstance(
        exc,
        redis.ReadOnlyError
        | redis.exceptions.BusyLoadingError
        | redis.exceptions.OutOfMemoryError  # maxmemory reached: waits until memory is freed
        | redis.exceptions.NoScriptError,
    ):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).lower().startswith(_TRANSIENT_MESSAGES)
    return False


# What a failed call tells about Redis, for whoever decides what to do next (daemon/faults.py
# for the loops; a one-shot producer maps it to an exit code or an HTTP status).
Fault = Literal["unreachable", "refused", "full", "fatal"]


def classify(exc: BaseException) -> Fault:
    """What `exc` says about Redis.

    "unreachable": no answer (network, restart, failover; LOADING, which redis-py raises as a
    connection error); "refused": an error reply that waiting cures (READONLY, BUSY...);
    "full": out of memory, Redis is up; "fatal": waiting cannot cure it (exit 78).
    """
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "full"
    if not is_transient(exc):
        return "fatal"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return "unreachable"
    if _cluster_unreachable(exc):
        return "unreachable"
    return "refused"


# What an error reply that waiting cures says about the server, by its error code.
_REFUSALS = {
    "READONLY": "a read-only replica (READONLY)",
    "LOADING": "loading its dataset (LOADING)",
    "BUSY": "busy running a script (BUSY)",
    "MISCONF": "unable to persist, refusing writes (MISCONF)",
    "NOREPLICAS": "not enough replicas for writes (NOREPLICAS)",
    "MASTERDOWN": "a replica whose master link is down (MASTERDOWN)",
    "UNBLOCKED": "changing role (UNBLOCKED)",
    "TRYAGAIN": "migrating keys (TRYAGAIN)",
    "CLUSTERDOWN": "a cluster that is down (CLUSTERDOWN)",
}


def refusal_reason(exc: BaseException) -> str:
    """Why Redis, answering, refused a command in a way waiting cures; "" if it did not answer.

    Out of memory is not one of these: the consumer drains a full Redis (see daemon/memory.py).
    """
    if not isinstance(exc, redis.ResponseError | redis.exceptions.BusyLoadingError):
        return ""
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or not is_transient(exc):
        return ""
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return _REFUSALS["LOADING"]
    if isinstance(exc, redis.ReadOnlyError):
        return _REFUSALS["READONLY"]
    if _cluster_code(exc):
        return _REFUSALS.get(_cluster_code(exc), f"redirecting ({_cluster_code(exc)})")
    code = (str(exc).split(" ", 1)[0] or type(exc).__name__).upper()
    return _REFUSALS.get(code, f"refusing commands ({code})")


def maybe_applied(exc: BaseException) -> bool:
    """Could the command that raised `exc` have been carried out by the server anyway?

    Decided by what happened on the wire, as recorded by taskd's connection classes
    (`SentTracking`): an error reply means refused; an exception raised before any byte of
    the command was written (connect, handshake, health check, a pool checkout, "max number
    of clients reached", Sentinel's MasterNotFoundError) means never sent; once the write
    began, a timeout or a broken connection leaves it unknown (the reply may be what was
    lost). An exception that did not pass through those classes gets the conservative
    answer of its type.
    """
    if isinstance(exc, redis.ResponseError | redis.exceptions.BusyLoadingError):
        return False
    if _cluster_unreachable(exc):  # raised by the cluster client before sending anything
        return False
    if getattr(exc, REFUSED, False):
        return False
    sent = getattr(exc, SENT, None)
    if sent is not None:
        return bool(sent)
    text = str(exc).lower()
    if "connecting to" in text or "timeout connecting" in text:
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError)


def fatal_reason(exc: BaseException, url: str) -> str:
    """One line explaining why `exc` stops the daemon, naming the (redacted) URL."""
    where = redis_url.redact(url)
    text = str(exc).strip() or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, SentinelAuthError):
        hint = (
            "expected the sentinels' own password (their requirepass) in the URL's "
            "sentinel_password=, --sentinel-password-file or TASKD_SENTINEL_PASSWORD"
        )
    elif (
        isinstance(exc, redis.AuthenticationError) or "wrongpass" in lowered or "noauth" in lowered
    ):
        hint = "expected a valid username/password in the redis URL"
    elif "unknown command" in lowered:
        hint = "expected Redis 6.2 or newer (taskd needs BLMOVE and Lua scripting)"
    elif "db index" in lowered:
        hint = "expected a database index the server has (see its `databases` setting)"
    elif (
        "noperm" in lowered
        or "can't run this command" in lowered  # a command inside a script, under an ACL
        or isinstance(exc, redis.exceptions.NoPermissionError)
    ):
        hint = (
            "expected an ACL user allowed the taskd commands, keys and channels "
            "(conf/redis-acl.conf)"
        )
    elif any(m in lowered for m in _FATAL_CONNECT_MESSAGES):
        hint = (
            "expected a server certificate signed by the CA of --tls-ca-file (and a client "
            "certificate the server accepts, for mutual TLS)"
        )
    elif "wrongtype" in lowered:
        hint = "expected the queue keys to be lists/sets of taskd; another program uses that name"
    else:
        hint = "expected a Redis server that accepts taskd's commands"
    return f"redis {where}: {text}; {hint}"
