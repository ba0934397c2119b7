"""What the web producer knows of Redis, and what it tells about itself: /readyz, /metrics.

The web process runs no loop and no LinkState: taskd_redis_connected and /readyz come from
the outcome of its own Redis calls (requests, and a PING where nothing else tells). /healthz
is liveness only: a Redis outage must not get the web process restarted.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from daemon import metrics
from daemon.memory import MemoryState
from daemon.producer import ReplicasNotConfirmed
from daemon.redis_errors import refusal_reason

# What the web process exports: the series it keeps true. The loops' series (progress clock,
# reconnects, out-of-memory...) are declared in the same registry but never set here, and a
# value that is never set is a lie (taskd_redis_connected stuck at 0 fired an alert for ever).
WEB_SERIES_PREFIXES = ("taskd_web_", "process_", "python_")
WEB_SERIES = ("taskd_redis_connected", "taskd_build")
# /metrics PINGs Redis first when no request has told taskd_redis_connected for this long.
CONNECTED_FRESH_FOR = 5.0
REFUSAL_REMEMBERED = 5.0  # seconds /readyz stays 503 after a refused push (none may come)

T = TypeVar("T")

_log = structlog.get_logger("taskd.web")


class RedisHealth:
    """taskd_redis_connected from the outcome of the web's own Redis calls.

    A reply (even an error reply) is 1; a failure to connect or to get a reply is 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.told_at = -math.inf  # monotonic time of the last outcome
        # The last push Redis refused for now (OOM, READONLY...): why, and when (monotonic)
        self._refused: tuple[str, float] | None = None

    def record(self, answered: bool) -> None:
        """Set the gauge from one call's outcome."""
        with self._lock:
            self.told_at = time.monotonic()
            metrics.REDIS_CONNECTED.set(1 if answered else 0)

    def observe(self, call: Callable[[], T], push: bool = False) -> T:
        """Run one Redis call and record its outcome; exceptions pass through.

        For a `push`, a refusal that waiting cures (out of memory, a read-only replica) is
        remembered for /readyz; a push that succeeds forgets it.
        """
        try:
            result = call()
        except (redis.RedisError, ReplicasNotConfirmed) as exc:
            # an error reply is an answer; a failure to connect or to get a reply is not
            self.record(not isinstance(exc, redis.ConnectionError | redis.TimeoutError))
            if push and (why := _refused_for_now(exc)):
                self._refused = (why, time.monotonic())
            raise
        self.record(True)
        if push:
            self._refused = None
        return result

    def refusing(self) -> str:
        """Why pushes were refused within the last REFUSAL_REMEMBERED seconds, or ""."""
        refused = self._refused
        if refused is None or time.monotonic() - refused[1] > REFUSAL_REMEMBERED:
            return ""
        return refused[0]

    def stale(self) -> bool:
        """True when no call has told the gauge for CONNECTED_FRESH_FOR seconds."""
        return time.monotonic() - self.told_at > CONNECTED_FRESH_FOR

    def refresh(self, ping: Callable[[], Any]) -> None:
        """PING when the gauge is stale, so an idle web process still tells the truth.

        A failure is recorded (the gauge tells it), not raised.
        """
        if self.stale():
            with contextlib.suppress(redis.RedisError):
                self.observe(ping)


def _refused_for_now(exc: BaseException) -> str:
    """Why Redis, answering, refused a push in a way that waiting cures; "" if it did not."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return MemoryState.REASON
    return refusal_reason(exc)


def readiness(health: RedisHealth, ping: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /readyz: 503 while Redis does not answer a PING, or answers but
    refused the last pushes (full, read-only...)."""
    try:
        health.observe(ping)
    except redis.RedisError as exc:
        _log.warning("web.not_ready", error=f"{type(exc).__name__}: {exc}")
        return 503, {"state": "not_ready", "redis": "down"}
    if refusing := health.refusing():
        doc = {"state": "not_ready", "redis": "connected", "refusing": refusing}
        return 503, {**doc, "reason": f"Redis refuses pushes: {refusing}"}
    return 200, {"state": "ready", "redis": "connected"}


class _WebSeries:
    """The process registry seen through WEB_SERIES: only the series this process keeps true."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name in WEB_SERIES or family.name.startswith(WEB_SERIES_PREFIXES):
                yield family


def web_registry() -> CollectorRegistry:
    """The registry /metrics serves in the web process."""
    view = CollectorRegistry(auto_describe=False)
    view.register(_WebSeries(metrics.registry()))
    return view
