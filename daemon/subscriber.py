"""The pub/sub loop: subscribe, poll with a deadline, PING, resubscribe after any fault.

Pub/sub is at-most-once: Redis keeps nothing for a subscriber that is not connected. So the
loop's job is to notice a lost subscription quickly and get it back, and to say how long it was
gone. One turn: mark progress, send a PING when one is due, wait at most a short poll for one
message, handle it. A connection that answers nothing (no message, no PONG) for twice the PING
interval is dead, whatever TCP thinks. Redis errors never end the loop: it waits with backoff and
re-subscribes; only errors that waiting cannot cure raise RedisFatalError (exit 78).

With ``--durable`` there is no channel to listen on: the messages that ``publish --durable``
also pushed onto ``<channel>:durable`` are consumed by the reliable list consumer instead.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog
from redis.backoff import AbstractBackoff
from redis.client import PubSub

from daemon import metrics
from daemon.cluster import pool_for, refresh_slots
from daemon.config import ConfigError, Settings
from daemon.connection import make_client
from daemon.handlers import Handler
from daemon.keys import durable_queue
from daemon.lifecycle import supervise
from daemon.liveness import Progress
from daemon.loop_base import RedisLoop
from daemon.redis_url import redact
from daemon.reliable import digest

PING_TOKEN = "taskd-ping"  # echoed in the PONG, so our PONGs are told apart from anything else
MAX_POLL = 1.0  # seconds one wait for a message may take: bounds the reaction to a stop
DATA_TYPES = ("message", "pmessage")
CONFIRM_TYPES = ("subscribe", "psubscribe")


class SubscriptionSilent(redis.ConnectionError):
    """The subscribed connection answered nothing (no message, no PONG) within its deadline."""

    def __init__(self, silent_for: float, deadline: float, silent_since: float) -> None:
        super().__init__(
            f"no message and no PONG for {silent_for:.1f} s "
            f"(deadline {deadline:g} s = 2 x --ping-interval)"
        )
        self.silent_since = silent_since


class _PubSub(PubSub):
    """A PubSub that never reconnects behind the loop's back.

    redis-py answers a broken connection by connecting again inside the failed call (and
    re-subscribing silently), even with no retries configured; on a black-holed flow that
    connect blocks the loop for the connect deadline. The loop owns reconnects instead, so
    here a failure only drops the connection, and the error propagates.
    """

    def _reconnect(self, conn: Any, *args: Any, **kwargs: Any) -> None:  # redis-py >= 6
        conn.disconnect()

    def _disconnect_raise_connect(self, conn: Any, error: Exception) -> None:  # redis-py 5
        conn.disconnect()
        raise error


class PingDeadline:
    """When to PING a subscribed connection, and when its silence means it is dead.

    Pure: the caller passes the time. Only time spent listening counts towards the deadline;
    a handler run pauses it (`listening_again`), since nothing is read meanwhile.
    """

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.last_heard = now  # last time the server sent us anything
        self.quiet_since = now  # start of the current wait for a sign of life
        self.last_ping = now  # the SUBSCRIBE itself asks for an answer

    @property
    def limit(self) -> float:
        """Seconds of silence after which the connection counts as dead."""
        return 2 * self.interval

    def heard(self, now: float) -> None:
        """The server sent something: the connection is alive."""
        self.last_heard = self.quiet_since = now

    def listening_again(self, now: float) -> None:
        """A handler run ended: the deadline restarts now (a PING is due if it ran long)."""
        self.quiet_since = max(self.quiet_since, now)

    def ping_due(self, now: float) -> bool:
        return now - self.last_ping >= self.interval

    def pinged(self, now: float) -> None:
        self.last_ping = now

    def silence(self, now: float) -> SubscriptionSilent | None:
        """The error to fail with when silent past the deadline, else None."""
        silent_for = now - self.quiet_since
        if silent_for > self.limit:
            return SubscriptionSilent(silent_for, self.limit, self.quiet_since)
        return None


class Subscriber(RedisLoop):
    """Handles messages of the configured channels and patterns until asked to stop."""

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        *,
        client: redis.Redis | None = None,
        backoff: AbstractBackoff | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            settings,
            structlog.get_logger("taskd.subscriber").bind(worker=settings.worker_id),
            role="subscriber",
            lost="the message being handled is lost (pub/sub keeps no copy)",
            backoff=backoff,
            progress=progress,
            clock=clock,
        )
        self.handler = handler
        self.worker = settings.worker_id
        # Our PING deadline replaces redis-py's health check: one liveness mechanism, not two
        # PINGs whose answers interleave with messages.
        quiet = dataclasses.replace(settings, health_check_interval=0)
        self.client = client or make_client(quiet, client_name=f"taskd-sub:{self.worker}")
        self.poll = min(MAX_POLL, settings.ping_interval / 2)
        self.subscriptions = (*settings.channels, *settings.patterns)
        self.pubsub: _PubSub | None = None
        self.deadline = PingDeadline(settings.ping_interval, clock())
        self._unconfirmed: set[tuple[str, str]] = set()
        self._subscribed_once = False
        self._lost_at: float | None = None  # last sign of life of the lost subscription
        self._counted_until = 0.0  # unsubscribed time already added to the metric
        metrics.preexport_channels(self.subscriptions)

    # -- the loop ---------------------------------------------------------------------------
    def started_fields(self) -> dict[str, Any]:
        s = self.settings
        return {
            "channels": list(s.channels),
            "patterns": list(s.patterns),
            "redis": redact(s.redis_url),
            "ping_interval": s.ping_interval,
            "socket_timeout": s.socket_timeout,
            "durable": False,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        self._drop()
        self.client.close()

    def turn(self) -> None:
        """Subscribe if needed, PING when due, wait up to one poll for a message, handle it."""
        started = self.faults.attempt()
        self.progress.mark()
        self._count_unsubscribed(started)
        try:
            if self.pubsub is None:
                self._subscribe()
            message = self._next_message()
            if message is not None and message["type"] not in DATA_TYPES:
                self._control(message)
                message = None
        except Exception as exc:
            self._redis_failed(exc)
            return
        if message is None:
            self.progress.work_done()  # a healthy, idle subscription: nothing to do
        else:
            self._handle(message)

    def _subscribe(self) -> None:
        """A fresh connection, subscribed to everything; confirmations arrive as messages."""
        # on a cluster classic PUBLISH reaches every node: any node's connection will do (the
        # one serving the first name's slot, the slot map re-read first: a node may be gone)
        refresh_slots(self.client)
        first = (self.settings.channels or self.settings.patterns or ("",))[0]
        pubsub = _PubSub(pool_for(self.client, first), ignore_subscribe_messages=False)
        try:
            if self.settings.channels:
                pubsub.subscribe(*self.settings.channels)
            if self.settings.patterns:
                pubsub.psubscribe(*self.settings.patterns)
        except Exception:
            pubsub.close()
            raise
        self.pubsub = pubsub
        self._unconfirmed = {("subscribe", c) for c in self.settings.channels} | {
            ("psubscribe", p) for p in self.settings.patterns
        }
        self.deadline = PingDeadline(self.settings.ping_interval, self.clock())

    def _next_message(self) -> dict[str, Any] | None:
        """PING when due; wait up to one poll for a message; fail a connection gone silent."""
        assert self.pubsub is not None and self.pubsub.connection is not None
        now = self.clock()
        if self.deadline.ping_due(now):
            self.pubsub.ping(PING_TOKEN)
            self.deadline.pinged(now)
        silence = self.deadline.silence(now)
        if silence is not None:
            raise silence
        # Wait for the first byte only as long as a poll; the rest of a (large) message then
        # has the full socket timeout, so a slow link does not look like a dead one.
        if not self.pubsub.connection.can_read(timeout=self.poll):
            return None
        response = self.pubsub.parse_response(block=False, timeout=self.settings.socket_timeout)
        self.deadline.heard(self.clock())
        message: dict[str, Any] | None = self.pubsub.handle_message(response)
        return message

    def _control(self, message: dict[str, Any]) -> None:
        """Subscription confirmations and PONGs; a server-side unsubscribe drops the link."""
        kind = message["type"]
        if kind in CONFIRM_TYPES:
            self._unconfirmed.discard((kind, _text(message["channel"])))
            if not self._unconfirmed:
                self._confirmed()
        elif kind in ("unsubscribe", "punsubscribe"):
            raise redis.ConnectionError(
                f"the server ended our subscription to {_text(message['channel'])!r}"
            )

    def _confirmed(self) -> None:
        """Every channel and pattern is confirmed: the subscription is whole again."""
        self.faults.succeeded()
        fields = {
            "channels": list(self.settings.channels),
            "patterns": list(self.settings.patterns),
        }
        if self._lost_at is None:
            if not self._subscribed_once:
                self.log.info("pubsub.subscribed", **fields)
        else:
            now = self.clock()
            self._count_unsubscribed(now)
            self.log.warning(
                "pubsub.resubscribed",
                unsubscribed_seconds=round(now - self._lost_at, 3),
                note="messages published while unsubscribed are lost (pub/sub keeps none)",
                **fields,
            )
            self._lost_at = None
        self._subscribed_once = True

    def _count_unsubscribed(self, now: float) -> None:
        """Add the unsubscribed time so far to the metric, so it grows during an outage too."""
        if self._lost_at is None or now <= self._counted_until:
            return
        seconds = now - max(self._lost_at, self._counted_until)
        for name in self.subscriptions:
            metrics.PUBSUB_UNSUBSCRIBED_SECONDS.labels(channel=name).inc(seconds)
        self._counted_until = now

    # -- one message ------------------------------------------------------------------------
    def _handle(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        pattern = _text(message["pattern"]) if message.get("pattern") else None
        label = pattern or channel  # the subscription: a bounded set, unlike matched channels
        body = message["data"]
        body = body if isinstance(body, bytes) else str(body).encode()
        bound = {"channel": channel, **({"pattern": pattern} if pattern else {})}
        structlog.contextvars.bind_contextvars(**bound)
        metrics.PUBSUB_MESSAGES.labels(channel=label).inc()
        self.progress.task_started(f"{channel}:{digest(body)[:12]}")
        started = time.perf_counter()
        try:
            self.handler(body)
        except Exception as exc:
            metrics.PUBSUB_FAILURES.labels(channel=label).inc()
            self.log.debug("message.handler_error", exc_info=True)
            self.log.error(
                "message.failed",
                error=f"{type(exc).__name__}: {exc}",
                duration=round(time.perf_counter() - started, 6),
                note="pub/sub has no retry; the message is dropped",
            )
        else:
            self.log.info("message.done", duration=round(time.perf_counter() - started, 6))
        finally:
            self.progress.task_finished()
            self.progress.work_done()
            self.deadline.listening_again(self.clock())
            structlog.contextvars.unbind_contextvars(*bound)

    # -- Redis errors -----------------------------------------------------------------------
    def _redis_failed(self, exc: Exception) -> None:
        """Drop the subscription (noting when it was last alive), then the fault policy.

        Backoff runs from the start of the failed attempt; a silent connection's attempt
        began when the silence did, so a dead link is not waited out twice.
        """
        if self.pubsub is not None and self._subscribed_once and self._lost_at is None:
            self._lost_at = self._counted_until = self.deadline.last_heard
        self._drop()
        since = None
        if isinstance(exc, SubscriptionSilent):
            since = min(self.faults.attempt_started, exc.silent_since)
        self.faults.failed(exc, interruptible=True, since=since)

    def _drop(self) -> None:
        """Close the pubsub connection (the server forgets its subscriptions with it)."""
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception as exc:  # noqa: BLE001 - a dead socket may fail to close; it is gone
                self.log.debug("pubsub.close_failed", error=str(exc))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def durable_settings(settings: Settings) -> Settings:
    """The consumer settings of `subscribe --durable`: one durable list per channel."""
    if settings.patterns:
        raise ConfigError(
            f"--pattern={settings.patterns[0]!r} with --durable: patterns cannot be durable "
            "(publish --durable keeps a list per channel); expected --channel only"
        )
    if not settings.channels:
        raise ConfigError("--durable without --channel: expected at least one --channel")
    queues = tuple(durable_queue(c) for c in settings.channels)
    return dataclasses.replace(settings, queues=queues).validate()


def run(settings: Settings, handler: Handler) -> int:
    """`taskd subscribe`: run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop).

    Raises ConfigError (exit 78) for unusable settings or a refusal that retrying cannot fix.
    """
    log = structlog.get_logger("taskd.subscriber").bind(worker=settings.worker_id)
    if settings.durable:
        from daemon.consumer import Consumer

        lists = durable_settings(settings)
        log.info(
            "subscriber.started",
            channels=list(settings.channels),
            patterns=[],
            redis=redact(settings.redis_url),
            durable=True,
            queues=list(lists.queues),
            pid=os.getpid(),
        )
        return supervise(Consumer(lists, handler))
    if not settings.channels and not settings.patterns:
        raise ConfigError("nothing to subscribe to: expected --channel C or --pattern P")
    # Without --durable the subscriber consumes no queue: its /metrics reads none either.
    return supervise(Subscriber(dataclasses.replace(settings, queues=()), handler))
