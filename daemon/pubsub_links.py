"""The subscriber's pub/sub connections: each with its own PING deadline, waited on together.

One `Link` is one connection to one node (daemon/pubsub_kind.py plans which): classic, it
is the only one; sharded on a cluster there is one per node serving some channel's slot. A
link is alive while its node answers: a message, a confirmation or the PONG of our PING.
`next_ready` waits at most one poll for whichever link has something to read.
"""

from __future__ import annotations

import select
from typing import Any

import redis
from redis.client import PubSub

from daemon.pubsub_kind import LinkPlan

PING_TOKEN = "taskd-ping"  # echoed in the PONG, so our PONGs are told apart from anything else


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


def blamed(exc: BaseException) -> Link | None:
    """The link whose operation raised `exc` (None: raised outside any one link)."""
    link = getattr(exc, _BLAMED, None)
    return link if isinstance(link, Link) else None


def blame(link: Link, exc: BaseException) -> BaseException:
    setattr(exc, _BLAMED, link)
    return exc


_BLAMED = "_taskd_pubsub_link"


class Link:
    """One subscribed connection: what it subscribes to, its PING deadline, what is unconfirmed.

    Whatever one of its operations raises names it (`blamed`), so the loop drops that link
    alone and keeps the others listening.
    """

    def __init__(self, plan: LinkPlan, ping_interval: float, now: float) -> None:
        self.plan = plan
        self.pubsub = _PubSub(plan.pool, ignore_subscribe_messages=False)
        self.deadline = PingDeadline(ping_interval, now)
        self.unconfirmed = plan.confirmations

    def subscribe(self) -> None:
        """Send this link's SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBEs; confirmations come later."""
        self._send(self.plan)

    def add(self, more: LinkPlan) -> None:
        """Subscribe to `more` on this (live) connection too."""
        self._send(more)
        self.plan = self.plan.merged(more)
        self.unconfirmed |= more.confirmations

    def forget_shard(self, channel: str) -> None:
        """The server ended the sharded subscription to `channel` (its slot moved away)."""
        self.plan = self.plan.without_shard(channel)
        self.unconfirmed.discard(("ssubscribe", channel))

    def _send(self, plan: LinkPlan) -> None:
        try:
            if plan.channels:
                self.pubsub.subscribe(*plan.channels)
            if plan.patterns:
                self.pubsub.psubscribe(*plan.patterns)
            for group in plan.shard_groups:  # SSUBSCRIBE: the channels of one slot at a time
                self.pubsub.ssubscribe(*group)
        except Exception as exc:
            blame(self, exc)
            raise

    def check(self, now: float) -> None:
        """PING when due; raise SubscriptionSilent when silent past the deadline."""
        try:
            if self.deadline.ping_due(now):
                self.pubsub.ping(PING_TOKEN)
                self.deadline.pinged(now)
            silence = self.deadline.silence(now)
        except Exception as exc:
            blame(self, exc)
            raise
        if silence is not None:
            raise blame(self, silence)

    def readable(self, timeout: float) -> bool:
        """Something to read within `timeout` s (0: only what is already buffered or arrived)."""
        connection = self.pubsub.connection
        assert connection is not None
        try:
            return bool(connection.can_read(timeout=timeout))
        except Exception as exc:
            blame(self, exc)
            raise

    def read(self, socket_timeout: float, now: float) -> dict[str, Any] | None:
        """The next reply, parsed (None for what redis-py swallows); the link was heard."""
        try:
            response = self.pubsub.parse_response(block=False, timeout=socket_timeout)
        except Exception as exc:
            blame(self, exc)
            raise
        self.deadline.heard(now)
        message: dict[str, Any] | None = self.pubsub.handle_message(response)
        return message

    def socket(self) -> Any:
        connection = self.pubsub.connection
        return getattr(connection, "_sock", None)

    def close(self) -> None:
        self.pubsub.close()


def next_ready(links: list[Link], poll: float, turn: int) -> Link | None:
    """The link with something to read within `poll` s, else None.

    One link waits in its own `can_read` (as a lone classic subscription always did);
    several are first asked for what they already hold, then waited on with select().
    `turn` rotates which link is asked first, so a busy one does not starve the others.
    """
    if len(links) == 1:
        return links[0] if links[0].readable(poll) else None
    ordered = links[turn % len(links) :] + links[: turn % len(links)]
    for link in ordered:
        if link.readable(0):
            return link
    sockets = [s for s in (link.socket() for link in ordered) if s is not None]
    if not sockets:
        return None
    ready, _, _ = select.select(sockets, [], [], poll)
    for link in ordered:
        if link.socket() in ready and link.readable(0):
            return link
    return None
