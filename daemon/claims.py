"""Claiming: tasks from the pending lists into this worker's processing lists.

While tasks are waiting, a batch of them (--prefetch, or as many as there are free handler
slots) is claimed in one round trip (one script, oldest first); an idle consumer blocks in a
BLMOVE of one with a finite timeout, so a push is seen at once. Several queues are served in
the order given (priority), each tried without blocking before one is blocked on, in turn.

The shards of one queue (--shards) are served fairly instead: claims keep to one shard for
a turn of SHARD_TURN tasks or TURN_BATCHES batches, whichever is more (so most acks carry
the next claim of the same shard, on its node), then move on to the next one, or at once
when that shard is found empty. Each consumer starts at a shard picked from its worker id,
so consumers mostly begin, and block when idle, on different shards.

Redis full (OOM under noeviction) is not Redis down: BLMOVE and LMOVE are refused, so the
claim becomes a non-blocking allow-oom script (polling), and a plain claim every
OOM_PROBE_EVERY seconds tells when Redis accepts writes again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

import redis

from daemon.memory import MemoryState
from daemon.reliable import ReliableQueue

OOM_POLL = 0.3  # seconds between claims of an empty queue while Redis is out of memory
OOM_PROBE_EVERY = 0.5  # seconds between plain claims that tell whether Redis is still full
SHARD_TURN = 32  # tasks claimed from one shard of a queue before the next shard's turn
TURN_BATCHES = 4  # ... or this many batches (--prefetch, --concurrency), if that is more

Claimed = list[tuple[ReliableQueue, bytes]]


class ShardTurns:
    """Which shard of each queue is served now: priority between queues, turns within one."""

    def __init__(
        self, groups: Sequence[Sequence[ReliableQueue]], seed: int, turn: int = SHARD_TURN
    ) -> None:
        self.groups = [list(group) for group in groups]
        self.turn = turn  # tasks per turn
        self._where = {id(q): (g, i) for g, group in enumerate(groups) for i, q in enumerate(group)}
        self._current = [seed % len(group) for group in self.groups]
        self._taken = [0] * len(self.groups)

    def order(self) -> list[ReliableQueue]:
        """Every queue, in the order to try them: by priority, each from its current shard."""
        return [
            q
            for group, at in zip(self.groups, self._current, strict=True)
            for q in group[at:] + group[:at]
        ]

    def first(self) -> ReliableQueue:
        """The queue a claim sent along with an ack goes to."""
        return self.groups[0][self._current[0]]

    def took(self, queue: ReliableQueue, n: int) -> None:
        """`n` tasks were claimed from `queue`: its shard's turn goes on, or ends."""
        g, i = self._where[id(queue)]
        if i != self._current[g]:
            self._current[g], self._taken[g] = i, 0
        self._taken[g] += n
        if self._taken[g] >= self.turn:
            self._current[g] = (i + 1) % len(self.groups[g])
            self._taken[g] = 0

    def found_empty(self, queue: ReliableQueue) -> None:
        """A claim of `queue` found nothing: if it was its shard's turn, the turn ends."""
        g, i = self._where[id(queue)]
        if i == self._current[g]:
            self._current[g] = (i + 1) % len(self.groups[g])
            self._taken[g] = 0


class Claimer:
    """Claims for one consumer; remembers whether Redis is full and whether the queues were
    found empty (then the next claim blocks at once instead of first trying a batch)."""

    def __init__(
        self,
        groups: Sequence[Sequence[ReliableQueue]],
        memory: MemoryState,
        stop: threading.Event,
        clock: Callable[[], float],
        batch: int = 1,
    ) -> None:
        self.queues = [q for group in groups for q in group]
        worker = self.queues[0].worker.encode() if self.queues else b""
        seed = int.from_bytes(hashlib.sha1(worker).digest()[:4], "big")
        # a turn of several batches, so most acks carry the next claim of the same shard
        self.turns = ShardTurns(groups, seed, max(SHARD_TURN, TURN_BATCHES * batch))
        self.memory = memory
        self.stop = stop
        self.clock = clock
        self._oom_probe_at = 0.0
        self._turn = seed
        self._found_empty = False

    def claim(self, timeout: float, n: int = 1) -> Claimed:
        """Claim up to `n` waiting tasks in one round trip, else block up to `timeout` for
        one (polling while Redis is full). Oldest first; [] when nothing came."""
        if self.memory.full:
            return self._claim_when_full(n)
        try:
            return self._claim_plain(timeout, n)
        except redis.exceptions.OutOfMemoryError:
            self.memory_seen(True)
            return self._claim_when_full(n)

    def scripted(self) -> bool:
        """Whether a claim sent along with an ack must be the allow-oom script (Redis full),
        rather than a plain claim that probes whether Redis takes writes again."""
        return self.memory.full and self.clock() < self._oom_probe_at

    def memory_seen(self, refused: bool | None) -> None:
        """A plain claim was refused as OOM (True) or carried out (False); None: no news."""
        if refused is None:
            return
        if refused:
            self._oom_probe_at = self.clock() + OOM_PROBE_EVERY
        self.memory.update(refused)

    def _claim_plain(self, timeout: float, n: int) -> Claimed:
        if n > 1 and not self._found_empty:
            claimed = self._batch_each(n)
            if claimed:
                return claimed
        elif len(self.queues) > 1:
            claimed = self._try_claim_each()
            if claimed:
                self._found_empty = False
                return claimed
        if len(self.queues) == 1:
            queue = self.queues[0]
        else:
            queue = self.queues[self._turn % len(self.queues)]
            self._turn += 1
            timeout = max(0.1, timeout / len(self.queues))
        body = queue.claim(timeout)
        self._found_empty = body is None
        if body is None:
            self.turns.found_empty(queue)
            return []
        return [(queue, body)]

    def _batch_each(self, n: int) -> Claimed:
        """A plain LMOVE first (a full Redis refuses it: OutOfMemoryError, noticed by the
        caller), then the batch script for the rest: FIFO across both."""
        for queue in self.turns.order():
            first = queue.try_claim()
            if first is not None:
                return [(queue, body) for body in [first, *queue.claim_batch(n - 1)]]
            self.turns.found_empty(queue)
        return []

    def _batch_each_when_full(self, n: int) -> Claimed:
        for queue in self.turns.order():
            bodies = queue.claim_batch(n)  # the batch script may run while Redis is full
            if bodies:
                return [(queue, body) for body in bodies]
            self.turns.found_empty(queue)
        return []

    def _try_claim_each(self) -> Claimed:
        for queue in self.turns.order():
            body = queue.try_claim()
            if body is not None:
                return [(queue, body)]
            self.turns.found_empty(queue)
        return []

    def _claim_when_full(self, n: int) -> Claimed:
        """Redis is full: claim by an allow-oom script, polling; every OOM_PROBE_EVERY
        seconds a plain claim instead, and once Redis takes it, back to the blocking claim."""
        if self.clock() >= self._oom_probe_at:
            try:
                claimed = self._try_claim_each()
            except redis.exceptions.OutOfMemoryError:
                self.memory_seen(True)
            else:
                self.memory_seen(False)
                return claimed
        if n > 1:
            claimed = self._batch_each_when_full(n)
            if claimed:
                return claimed
        else:
            for queue in self.turns.order():
                body = queue.claim_when_full()
                if body is not None:
                    return [(queue, body)]
        self.stop.wait(OOM_POLL)
        return []
