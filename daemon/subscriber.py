"""The pub/sub loop: subscribe, poll with a deadline, PING, resubscribe after any fault.

Pub/sub is at-most-once: Redis keeps nothing for a subscriber that is not connected. So the
loop's job is to notice a lost subscription quickly and get it back, and to say how long it was
gone. One turn: mark progress, send a PING when one is due, wait at most a short poll for one
message, handle it. A connection that answers nothing (no message, no PONG) for twice the PING
interval is dead, whatever TCP thinks. Redis errors never end the loop: it waits with backoff and
re-subscribes; only errors that waiting cannot cure raise RedisFatalError (exit 78).

Which pub/sub (``--pubsub``: classic, sharded, or auto: both on a cluster with SSUBSCRIBE) is
decided at the first subscribe (daemon/pubsub_kind.py). Sharded on a cluster, the channels of
different slots may live on different nodes: one connection per node (daemon/pubsub_links.py),
each with its own PING deadline, all waited on together. A fault on one drops that one only:
the others keep listening while its subscriptions are made again (from a fresh slot map) after
the backoff. A slot that moves (resharding, a failover) makes its old node send
``sunsubscribe``: that channel is subscribed again at once where its slot is now (no backoff:
nothing is down), logged as ``pubsub.slot_moved``. A lone connection (classic, or one node)
behaves as it always did: a fault drops it and the loop waits out the backoff.

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

from daemon import metrics, pubsub_kind
from daemon.cluster import refresh_slots
from daemon.config import ConfigError, Settings
from daemon.connection import make_client
from daemon.handlers import Handler
from daemon.keys import durable_queue
from daemon.lifecycle import supervise
from daemon.liveness import Progress
from daemon.loop_base import RedisLoop
from daemon.pubsub_kind import ShardedUnavailable
from daemon.pubsub_links import (
    PING_TOKEN,
    Link,
    PingDeadline,
    SubscriptionSilent,
    _PubSub,
    blame,
    blamed,
    next_ready,
)
from daemon.redis_errors import classify
from daemon.redis_url import redact
from daemon.reliable import digest

__all__ = ["PING_TOKEN", "PingDeadline", "Subscriber", "SubscriptionSilent", "_PubSub", "run"]
MAX_POLL = 1.0  # seconds one wait for a message may take: bounds the reaction to a stop
DATA_TYPES = ("message", "pmessage", "smessage")  # smessage: SSUBSCRIBE's (redis-py's name)
CONFIRM_TYPES = ("subscribe", "psubscribe", "ssubscribe")


class SlotMoved(Exception):
    """The server ended a sharded subscription (``sunsubscribe``): its slot moved away."""


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
        self.links: list[Link] = []
        self.listen: str | None = None  # CLASSIC, SHARDED or BOTH, decided at the first subscribe
        self.wanted: set[tuple[str, str]] = set()  # every (confirmation, name) to hold
        self._retry_at = 0.0  # while other links listen: when to subscribe the missing again
        self._turns = 0
        self._moved_at = -1e9  # when a slot last moved away under us
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
            "pubsub": s.pubsub,
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
            if self.listen is None or (self._missing() and self.clock() >= self._retry_at):
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

    def _missing(self) -> set[tuple[str, str]]:
        """The subscriptions no live link holds (sent and unconfirmed ones count as held)."""
        held: set[tuple[str, str]] = set()
        for link in self.links:
            held |= link.plan.confirmations
        return self.wanted - held

    def _subscribe(self) -> None:
        """Subscribe what no link holds, on fresh connections or live ones to the same node;
        confirmations arrive as messages. Every node is tried; the first error is raised."""
        # the slot map re-read first: a node may be gone, a slot may have moved
        refresh_slots(self.client)
        s = self.settings
        if self.listen is None:
            first = (s.channels or s.patterns or ("",))[0]
            kind = pubsub_kind.resolve(s.pubsub, self.client, first)
            self.listen = pubsub_kind.listens_with(s.pubsub, kind)
            self.wanted = pubsub_kind.wanted(self.listen, s.channels, s.patterns)
        missing = self._missing()
        plans = pubsub_kind.plan_links(
            self.client,
            tuple(c for c in s.channels if ("ssubscribe", c) in missing),
            tuple(c for c in s.channels if ("subscribe", c) in missing),
            tuple(p for p in s.patterns if ("psubscribe", p) in missing),
        )
        failure: Exception | None = None
        for plan in plans:
            live = next((k for k in self.links if plan.node and k.plan.node == plan.node), None)
            link = live or Link(plan, s.ping_interval, self.clock())
            try:
                link.add(plan) if live else link.subscribe()
            except Exception as exc:
                if pubsub_kind.is_sharded_missing(exc):
                    raise ShardedUnavailable(redact(s.redis_url)) from exc
                if live is None:
                    link.close()
                failure = failure or exc
                continue
            if live is None:
                self.links.append(link)
        if failure is not None:
            raise failure

    def _next_message(self) -> dict[str, Any] | None:
        """PING when due; wait up to one poll for a message; fail a connection gone silent."""
        now = self.clock()
        if not self.links:  # all lost, the next subscribe not due yet: wait for it
            self.stop_requested.wait(max(0.0, min(self.poll, self._retry_at - now)))
            return None
        for each in self.links:
            each.check(now)
        self._turns += 1
        # Wait for the first byte only as long as a poll; the rest of a (large) message then
        # has the full socket timeout, so a slow link does not look like a dead one.
        link = next_ready(self.links, self.poll, self._turns)
        if link is None:
            return None
        message = link.read(self.settings.socket_timeout, self.clock())
        if message is not None:
            message["link"] = link
        return message

    def _control(self, message: dict[str, Any]) -> None:
        """Subscription confirmations and PONGs; a server-side unsubscribe drops the links."""
        kind, link = message["type"], message["link"]
        if kind in CONFIRM_TYPES:
            link.unconfirmed.discard((kind, _text(message["channel"])))
            if not self._missing() and not any(other.unconfirmed for other in self.links):
                self._confirmed()
        elif kind == "sunsubscribe":
            link.forget_shard(_text(message["channel"]))
            raise SlotMoved(_text(message["channel"]))
        elif kind in ("unsubscribe", "punsubscribe"):
            raise blame(
                link,
                redis.ConnectionError(
                    f"the server ended our subscription to {_text(message['channel'])!r}"
                ),
            )

    def _confirmed(self) -> None:
        """Every channel and pattern is confirmed: the subscription is whole again."""
        self.faults.succeeded()
        fields = {
            "channels": list(self.settings.channels),
            "patterns": list(self.settings.patterns),
            "kind": self.listen,
        }
        nodes = [link.plan.node for link in self.links if link.plan.node]
        if nodes:
            fields["nodes"] = nodes
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
        missing = {name for _, name in self._missing()} if self.links else self.subscriptions
        for name in missing:
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
            now = self.clock()
            for link in self.links:
                link.deadline.listening_again(now)
            structlog.contextvars.unbind_contextvars(*bound)

    # -- Redis errors -----------------------------------------------------------------------
    def _redis_failed(self, exc: Exception) -> None:
        """Drop the link that failed (noting when the subscription was last whole), then the
        fault policy: with other links still listening, no wait here (the missing are
        subscribed again once the backoff is over); with none left, its wait, as always.

        Backoff runs from the start of the failed attempt; a silent connection's attempt
        began when the silence did, so a dead link is not waited out twice.
        """
        now = self.clock()
        if isinstance(exc, SlotMoved):
            self._slot_moved(str(exc), now)
            return
        link = blamed(exc)
        gone = [link] if link in self.links else []
        if self._subscribed_once and self._lost_at is None and gone:
            self._lost_at = self._counted_until = min(k.deadline.last_heard for k in gone)
        for each in gone:
            self.links.remove(each)
            self._close(each)
        if isinstance(exc, ShardedUnavailable):
            raise exc  # one line, exit 78: waiting will not give the server SSUBSCRIBE
        since = None
        if isinstance(exc, SubscriptionSilent):
            since = min(self.faults.attempt_started, exc.silent_since)
        if self.links and classify(exc) != "fatal":
            metrics.REDIS_ERRORS.labels(kind=type(exc).__name__).inc()
            spent = now - (self.faults.attempt_started if since is None else since)
            self._retry_at = now + max(0.0, self.faults.link.failed(exc) - spent)
            return
        self._drop()
        self._retry_at = 0.0
        self.faults.failed(exc, interruptible=True, since=since)

    def _slot_moved(self, channel: str, now: float) -> None:
        """Not an outage: the channel's slot is served elsewhere now. Subscribe there at once
        (after a short pause if a slot moved a moment ago too, so a flapping one cannot spin)."""
        self.log.warning(
            "pubsub.slot_moved",
            channel=channel,
            note="the server ended the sharded subscription; subscribing where the slot is now",
        )
        if self._subscribed_once and self._lost_at is None:
            self._lost_at = self._counted_until = now
        pause = self.settings.backoff_base if now - self._moved_at < 1.0 else 0.0
        self._retry_at, self._moved_at = now + pause, now

    def _drop(self) -> None:
        """Close the pubsub connections (the server forgets their subscriptions with them)."""
        links, self.links = self.links, []
        for link in links:
            self._close(link)

    def _close(self, link: Link) -> None:
        try:
            link.close()
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
    return dataclasses.replace(settings, queues=queues, shards=1).validate()


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
