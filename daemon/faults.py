"""One Redis fault policy for every loop: call until it succeeds, settle as applied or unknown.

Modelled on redis-py's `Retry(backoff, retries).call_with_retry`: a small object with the
backoff, the clock and the stop event injected, so tests drive it without sleeping. What an
error means comes from daemon/redis_errors.py; what to do about it is decided here, once:

- transient (Redis down, READONLY, LOADING...): record the outage in `LinkState` (one log line
  per change of state), wait with backoff measured from the attempt's start (an attempt that
  hung until its deadline has already waited), try again;
- out of memory: Redis answered, so it is up but full; `on_oom` hooks, a short wait, again;
- anything else: RedisFatalError (exit 78) for a Redis error, the exception itself otherwise.

What a loop does about a reconnect (check the server again, reconcile lost replies) it hangs on
the policy's hooks; the skeleton stays here. A reconnect loop may run for days: the backoff is
fed a capped failure count (`BACKOFF_STEPS`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import redis
from redis.backoff import AbstractBackoff, FullJitterBackoff

from daemon import metrics
from daemon.config import Settings
from daemon.redis_errors import (
    RedisFatalError,
    classify,
    fatal_reason,
    maybe_applied,
    refusal_reason,
)

T = TypeVar("T")

OOM_POLL = 0.3  # seconds between attempts while Redis refuses writes as out of memory


def make_backoff(settings: Settings) -> AbstractBackoff:
    """Exponential backoff with full jitter, capped: the reconnect policy of every loop."""
    return FullJitterBackoff(cap=settings.backoff_cap, base=settings.backoff_base)


# The backoff is fed at most this many failures: 2**32 x any base is past any cap, while a
# count that grows for days would overflow the exponential (OverflowError near 1,024).
BACKOFF_STEPS = 32


@dataclass
class LinkState:
    """Whether Redis is reachable; logs each state change once, not once per attempt.

    `failed()` returns how long to wait before the next attempt, from the injected backoff;
    the clock is injected too, so tests drive it without sleeping.
    """

    backoff: AbstractBackoff
    log: Any
    clock: Callable[[], float] = time.monotonic
    connected: bool | None = None  # None: not tried yet
    failures: int = 0  # attempts that failed in this outage: the true count, for the logs
    down_since: float | None = None
    reconnects: int = 0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)
    # Reachable but refusing writes for a reason of its own (e.g. "out of memory"); "" = none.
    refusing: str = ""
    # maxmemory-policy read after the last (re)connect; "" = not known yet.
    eviction_policy: str = ""
    # The current outage is Redis answering with error replies that waiting cures (READONLY,
    # LOADING, BUSY...): reachable, but refusing our commands. "" = unreachable, or no outage.
    rejecting: str = ""
    rejecting_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns the delay before the next attempt."""
        with self._lock:
            rejecting = refusal_reason(exc)
            if self.connected is not False:
                self.down_since = self.clock()
                self.log.warning(
                    "redis.disconnected",
                    error=f"{type(exc).__name__}: {exc}",
                    first_contact=self.connected is None,
                    **({"refusing": rejecting} if rejecting else {}),
                )
                self.connected = False
                self._notify(False)
            if rejecting and not self.rejecting:
                self.rejecting_since = self.clock()
            self.rejecting = rejecting
            if not rejecting:
                self.rejecting_since = None
            self.failures += 1
            return float(self.backoff.compute(min(self.failures, BACKOFF_STEPS)))

    def succeeded(self) -> bool:
        """Record a successful call; True when this ended an outage."""
        if self.connected:  # the hot path: nothing changes, no lock needed
            return False
        with self._lock:
            if self.connected:
                return False
            was_down = self.connected is False
            if was_down:
                since = self.down_since
                outage = self.clock() - (since if since is not None else self.clock())
                self.reconnects += 1
                self.log.info(
                    "redis.reconnected", outage_seconds=round(outage, 3), attempts=self.failures
                )
            else:
                self.log.info("redis.connected")
            self.connected = True
            self.failures = 0
            self.down_since = None
            self.rejecting, self.rejecting_since = "", None
            self._notify(True)
            return was_down

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)


@dataclass(frozen=True)
class Applied(Generic[T]):
    """`settle`: the operation was carried out; `value` is what it returned."""

    value: T
    refusals: int = 0  # attempts refused or never sent before this one went through


@dataclass(frozen=True)
class Unknown:
    """`settle`: the operation was sent and its reply lost; it may or may not have been applied."""

    error: Exception
    refusals: int = 0  # attempts refused or never sent before the one whose reply was lost


class Interrupted(Exception):
    """An interruptible `call` gave up: a stop was requested while Redis kept failing."""


class StopEvent(Protocol):
    """What the policy needs of a stop request: a `threading.Event` (or a test's fake)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


Hook = Callable[[], object]


class RedisFaultPolicy:
    """The one answer of every taskd loop to a failed Redis call (see the module docstring).

    `stop` cuts interruptible waits short; `pause` waits that a stop must not cut short (an
    ack, a reconciliation: the drain timer bounds those). `progress` (a liveness.Progress) is
    marked before each wait, so an outage is not taken for a stall.
    Hooks, each called on the loop's thread, in order:
    `on_reconnect` when a success ends an outage; `on_disconnect` when a connection-level
    error (not an error reply) means the next server may be another one; `on_oom` when
    Redis refuses a write as out of memory.
    """

    def __init__(
        self,
        link: LinkState,
        url: str,
        stop: StopEvent,
        *,
        progress: Any = None,
        pause: Callable[[float], object] | None = None,
        oom_poll: float = OOM_POLL,
    ) -> None:
        self.link = link
        self.url = url  # named (redacted) in the line of a fatal error
        self.stop = stop
        self.progress = progress
        self.pause = pause or threading.Event().wait
        self.oom_poll = oom_poll
        self.on_reconnect: list[Hook] = []
        self.on_disconnect: list[Hook] = []
        self.on_oom: list[Hook] = []
        self.attempt_started = link.clock()

    @classmethod
    def for_loop(
        cls,
        settings: Settings,
        log: Any,
        stop: StopEvent,
        *,
        backoff: AbstractBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress: Any = None,
    ) -> RedisFaultPolicy:
        """The policy of a loop process: settings' backoff, taskd_redis_connected kept true."""
        link = LinkState(backoff or make_backoff(settings), log, clock=clock)
        link.listeners.append(lambda up: metrics.REDIS_CONNECTED.set(1 if up else 0))
        return cls(link, settings.redis_url, stop, progress=progress)

    @property
    def clock(self) -> Callable[[], float]:
        return self.link.clock

    @property
    def log(self) -> Any:
        return self.link.log

    def attempt(self) -> float:
        """An attempt starts now: a later failure's backoff is measured from here."""
        self.attempt_started = self.clock()
        return self.attempt_started

    def succeeded(self) -> bool:
        """A Redis call succeeded; True (after the `on_reconnect` hooks) when it ended an outage."""
        if not self.link.succeeded():
            return False
        metrics.REDIS_RECONNECTS.inc()
        _run(self.on_reconnect)
        return True

    def failed(self, exc: Exception, *, interruptible: bool, since: float | None = None) -> None:
        """A Redis call raised `exc`: raise if waiting cannot cure it, else wait before the next.

        The backoff runs from `since` (default: the last `attempt()`). Raises RedisFatalError
        (exit 78) for a Redis error that waiting cannot cure, `exc` itself for any other error.
        """
        fault = classify(exc)
        if fault == "fatal":
            if isinstance(exc, redis.RedisError):
                raise RedisFatalError(fatal_reason(exc, self.url)) from exc
            raise exc
        metrics.REDIS_ERRORS.labels(kind=type(exc).__name__).inc()
        if fault == "full":
            # Redis answered: up but full, not an outage. Try again soon (a drain frees memory).
            self.succeeded()
            _run(self.on_oom)
            self._wait(self.oom_poll, interruptible)
            return
        spent = self.clock() - (self.attempt_started if since is None else since)
        if fault == "unreachable":
            _run(self.on_disconnect)
        delay = max(0.0, self.link.failed(exc) - spent)
        self.log.debug("redis.retry", error=str(exc), delay=round(delay, 3))
        self._wait(delay, interruptible)

    def call(self, operation: Callable[[], T], *, interruptible: bool) -> T:
        """Run `operation` (idempotent: it may be sent twice) until it succeeds; its result.

        Interruptible: a stop request cuts the wait short and raises Interrupted. Otherwise
        the stop does not end it; the drain timer bounds the whole stop instead.
        """
        while True:
            self.attempt()
            try:
                result = operation()
            except Exception as exc:
                self.failed(exc, interruptible=interruptible)
                if interruptible and self.stop.is_set():
                    raise Interrupted(str(exc)) from exc
                continue
            self.succeeded()
            return result

    def settle(self, operation: Callable[[], T]) -> Applied[T] | Unknown:
        """Carry out a write that must not be applied twice (an ack): applied, or unknown.

        Refused or never sent (Redis down, READONLY, LOADING, OOM): wait and send it again, as
        long as it takes (a stop does not cut it short). Sent but unanswered (`maybe_applied`):
        the failure is recorded and waited out as any other, then Unknown, without re-sending.
        """
        refusals = 0
        while True:
            self.attempt()
            try:
                result = operation()
            except Exception as exc:
                self.failed(exc, interruptible=False)
                if maybe_applied(exc):
                    return Unknown(exc, refusals)
                refusals += 1
                continue
            self.succeeded()
            return Applied(result, refusals)

    def _wait(self, seconds: float, interruptible: bool) -> None:
        if self.progress is not None:
            self.progress.mark()
        (self.stop.wait if interruptible else self.pause)(seconds)


def _run(hooks: list[Hook]) -> None:
    for hook in hooks:
        hook()
