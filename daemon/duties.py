"""The recurring Redis duties of a consumer, and when each is due.

Between claims the loop keeps its heartbeat alive, moves due retries back to the queue, looks
for dead peers and reconciles claims whose reply was lost. Each has its own clock; the loop
asks `run(now)` once per turn (cheap while nothing is due) and the rest happens here.

Heartbeat: every second while the worker holds tasks; while idle, only as often as it takes
to outlive the next blocking claim with IDLE_BEAT_MARGIN to spare. The TTL, and so how soon a
dead worker is found, stays as set; an idle worker just sends fewer commands. Likewise an idle
worker promotes due retries about once per block timeout (every turn of one queue), a busy
one every second, and looks first whether anything is delayed at all (one EXISTS per
queue), and the periodic reconciliation first looks whether the processing list holds more
than the worker knows of (one LLEN). Every UNSERVED_EVERY seconds one pipelined LLEN per
queue looks at the shard past the ones served: tasks there (producers given more --shards
than the consumers) are said in a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daemon.config import Settings
from daemon.faults import LinkState
from daemon.inflight import Task
from daemon.keys import unserved_shard
from daemon.recovery import Recovery
from daemon.reliable import ReliableQueue
from daemon.status import unserved_tasks

HEARTBEAT_EVERY = 1.0  # seconds between heartbeats of a busy worker
PROMOTE_EVERY = 1.0  # seconds between moves of due retries back to pending
MAINTAIN_GRANULARITY = 0.1  # seconds: how often the loop looks at what is due
IDLE_BEAT_MARGIN = 2.0  # seconds an idle worker's heartbeat has left, at least, when renewed
UNSERVED_EVERY = 30.0  # seconds between looks at the shard past ours (keys.unserved_shard)


class Duties:
    """What is due when, for one consumer; `held` is what the worker holds right now."""

    def __init__(
        self,
        settings: Settings,
        queues: list[ReliableQueue],
        recovery: Recovery,
        link: LinkState,
        held: Callable[[], Sequence[Task]],
        clock: Callable[[], float],
        log: Any,
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.recovery = recovery
        self.link = link
        self.held = held
        self.clock = clock
        self.reconcile_at: list[float] = []  # when to look for lost claim replies
        self._next: dict[str, float] = {}
        self._after = 0.0  # nothing is due before this
        self._beat_at = 0.0  # when the heartbeat was last sent
        self._promoted_at = -PROMOTE_EVERY  # when due retries were last looked for
        # idle: about once per blocking claim of the whole queue (an idle consumer of N
        # shards blocks on each for block timeout / N: it need not look N times as often)
        self._idle_promote_every = max(PROMOTE_EVERY, 0.9 * settings.block_timeout)
        self._unserved: set[str] | None = set()  # shards past ours holding tasks; None: no look
        self.log = log

    def run(self, now: float) -> bool:
        """Do what is due; whether any Redis command was sent."""
        if now < self._after:  # the hot path: nothing is due yet
            return False
        self._after = now + MAINTAIN_GRANULARITY
        sent = self.beat_if_due(now)
        idle = not self.held()
        if now - self._promoted_at >= (self._idle_promote_every if idle else PROMOTE_EVERY):
            self._promoted_at = now
            sent = True
            for queue in self.queues:
                # idle: one EXISTS instead of the script (TIME + ZRANGEBYSCORE) when nothing
                # is delayed; whether something is due is the script's call (Redis's clock)
                if not idle or queue.client.exists(queue.keys.delayed):
                    queue.promote_due()
        # Not in the turn that ends an outage: peers get one heartbeat TTL to beat again
        # first (see `reconnected`), and our own lost claims are reconciled right after it.
        if self.link.connected and self._due("recover", self.settings.recovery_interval, now):
            sent = True
            self.recovery.recover_dead_peers()
            if self.recovery.holds_unseen(self.held()):  # one LLEN per queue, mostly
                self.reconcile("periodic")
        if self.link.connected and self._due("unserved", UNSERVED_EVERY, now):
            sent = True
            self._look_for_unserved_shards()
        if any(t <= now for t in self.reconcile_at):
            sent = True
            self.reconcile_at = [t for t in self.reconcile_at if t > now]
            self.reconcile("after_reconnect")
        return sent

    def beat_if_due(self, now: float) -> bool:
        """Refresh the heartbeat if due (module docstring); whether it was sent."""
        s = self.settings
        due = self._beat_at + min(HEARTBEAT_EVERY, s.heartbeat_ttl / 3)
        if not self.held():
            margin = max(IDLE_BEAT_MARGIN, s.block_timeout / 2)
            due = max(due, self._beat_at + s.heartbeat_ttl - s.block_timeout - margin)
        if now < due:
            return False
        self.beaten(now)
        for queue in self.queues:
            queue.heartbeat(s.heartbeat_ttl)
        return True

    def beaten(self, now: float) -> None:
        """The heartbeat was sent at `now` (at startup, by the loop itself)."""
        self._beat_at = now

    def reconcile(self, why: str) -> None:
        """Return claims whose reply never reached us; every task we hold stays."""
        self.recovery.reconcile(why, [(t.queue, t.body) for t in self.held()])

    def reconcile_soon(self) -> None:
        """A claim's reply may have been lost: reconcile at the start of the next turn."""
        self.reconcile_at.append(self.clock())
        self._after = 0.0

    def reconnected(self) -> None:
        """An outage ended: reconcile now and once more after a socket timeout (a claim still
        blocked on the dead connection may move a task in until the server gives up on it);
        give peers one heartbeat TTL to beat again before their tasks are taken for dead
        (that would only cost a duplicate run)."""
        now = self.clock()
        self._after = 0.0
        self.reconcile_at += [now, now + self.settings.socket_timeout]
        self._next["recover"] = now + self.settings.heartbeat_ttl

    def _look_for_unserved_shards(self) -> None:
        """Tasks on a shard past ours would wait for ever, unseen: say so (once per change).

        An ACL user whose key patterns leave out the shards' names cannot look: said once.
        """
        if self._unserved is None:
            return
        found = unserved_tasks(self.queues[0].client, self.settings.queues, self.settings.shards)
        if found is None:
            self._unserved = None
            self.log.info(
                "queue.unserved_shard_unchecked",
                shard=unserved_shard(self.settings.queues[0], self.settings.shards),
                note="the ACL user may not read it: tasks pushed onto more shards than "
                "this consumer serves are not looked for (docs/scale-out.md)",
            )
            return
        for queue in self.settings.queues:
            shard = unserved_shard(queue, self.settings.shards)
            if (shard in found) == (shard in self._unserved):
                continue
            self._unserved ^= {shard}
            if shard in found:
                self.log.warning(
                    "queue.unserved_shard",
                    queue=queue,
                    shard=shard,
                    waiting=found[shard],
                    shards=self.settings.shards,
                    note="producers push onto more shards than this consumer serves: "
                    "give every producer and consumer the same --shards",
                )
            else:
                self.log.info("queue.unserved_shard_empty", queue=queue, shard=shard)

    def _due(self, name: str, every: float, now: float) -> bool:
        if now >= self._next.get(name, 0.0):
            self._next[name] = now + every
            return True
        return False
