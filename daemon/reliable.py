"""The reliable-queue operations on Redis: claim, ack, retry, dead-letter, recover.

Every operation that moves a task between two keys is one atomic step (a Lua script of
daemon/lua/, one file per operation, or a single command), so a crash between two commands
can never leave a task in no key at all.
The task body is stored exactly as the producer pushed it; the attempt counter of a task is
kept under the SHA-1 of its body (two tasks with identical bodies share one counter).

Enqueue stamps (``Q:stamps``, written by daemon.producer, member = the same SHA-1): a task
that leaves for good (acked, dead-lettered) takes its stamp with it, inside the same script;
retries, promotion and recovery keep it (the age counts from the first enqueue); a requeued
dead letter is stamped anew. Identical bodies share one stamp, as they share one counter.

Redis full (maxmemory reached, noeviction): every script only moves or removes data, or adds
a bounded few bytes (an attempt counter, a delayed-set token, a dead-letter document whose
error text is capped), so they may run when Redis refuses writes: on Redis >= 7 they are
declared `#!lua flags=allow-oom`; on 6.2 they run as plain scripts whose first write removes
or expires something, which Redis's legacy rule lets finish under OOM (see `use_allow_oom`).

Batches (`--prefetch`): claims, acks and returns of up to MAX_BATCH tasks are each one script,
so a batch is claimed, settled or given back whole or not at all.

One worker id, one process: the worker's heartbeat key holds its owner record (see
daemon/ownership.py); the scripts that touch the worker's own processing list first check
that the key still holds this process's record (or nothing), atomically.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from daemon.cluster import pool_for, refresh_slots
from daemon.keys import QueueKeys
from daemon.lua import Scripts
from daemon.ownership import Owner
from daemon.pipelined import ReplyLost, send_at_once
from daemon.redis_errors import RedisFatalError

# replies of a cluster node that does not (or no longer, or not yet) serve the slot
_REDIRECTS = (
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
)

TOKEN_BYTES = 8  # random prefix of a delayed member, so identical bodies never collapse
TOKEN_CHARS = TOKEN_BYTES * 2
MAX_BATCH = 1000  # tasks per batch claim, ack or return: every script reply stays bounded
LOST = -2  # what a script returns when the worker id is held by another process

_SCRIPTS = (
    "ack_batch",
    "claim_batch",
    "fail",
    "dead_letter",
    "promote",
    "requeue_dead",
    "take",
    "heartbeat",
    "forget",
    "recover_dead_worker",
    "recover_own",
    "reconcile",
    "release",
)


def _bounded(n: int, what: str) -> int:
    if not 1 <= n <= MAX_BATCH:
        raise ValueError(f"{what} must be between 1 and {MAX_BATCH}, not {n}")
    return n


class WorkerIdLost(RedisFatalError):
    """Another process holds our worker id: stop without touching its processing list."""


def digest(body: bytes) -> str:
    """The attempt-counter field of a task (matches Lua's redis.sha1hex)."""
    return hashlib.sha1(body).hexdigest()  # noqa: S324 - an identifier, not security


@dataclass(frozen=True)
class Recovered:
    """Outcome of a recovery: tasks returned to pending, tasks now due for the dead letters."""

    returned: int
    doomed: list[bytes]
    skipped: bool = False  # the owner turned out to be alive


class ReliableQueue:
    """Reliable operations on one queue, for one worker, over one Redis client."""

    def __init__(
        self, client: redis.Redis, queue: str, worker: str, owner: Owner | None = None
    ) -> None:
        # redis-py's annotations are narrower than what it accepts (bytes values, float
        # timeouts), so the client is used untyped here.
        self.client: Any = client
        self.keys = QueueKeys(queue)
        self.worker = worker
        self.processing = self.keys.processing(worker)
        self.alive_key = self.keys.alive(worker)
        self.owner = owner or Owner.current()
        self.owner_record = self.owner.encode()
        self.scripts = Scripts(client, _SCRIPTS)
        self._ack_keys = [self.processing, self.keys.attempts, self.alive_key, self.keys.stamps]
        self._claim_keys = [self.keys.pending, self.processing]
        self._own_keys = [self.processing, self.keys.pending, self.alive_key]
        # After each plain claim: True when Redis refused it as out of memory, False when it
        # was carried out; None after a scripted claim or a lost reply (no news on memory).
        self.claim_refused_oom: bool | None = None
        # After each ack_batch_and_claim: True when the ack's reply came but the claim's was
        # lost (the connection broke between them): the claim may have moved tasks in.
        self.claim_lost = False

    def use_allow_oom(self, flagged: bool) -> None:
        """Use the `#!lua flags=allow-oom` scripts (Redis >= 7.0; 6.2 cannot parse them)."""
        self.scripts.use_allow_oom(flagged)

    def preload(self) -> None:
        """Load the scripts of the form in use, in one round trip (after each (re)connect)."""
        self.scripts.preload()

    def _run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        return self.scripts.run(name, keys, args)

    def _check_owned(self, reply: Any) -> None:
        if isinstance(reply, list) and reply and reply[0] == LOST:
            raise self.lost(reply[1])

    def lost(self, holder: Any) -> WorkerIdLost:
        """The error for finding our worker id held by `holder` (a record or raw bytes)."""
        found = Owner.parse(holder)
        who = found.describe() if found else f"an unknown holder ({holder!r:.60})"
        return WorkerIdLost(
            f"worker id {self.worker!r} of queue {self.keys.queue!r} was taken over by another "
            f"process ({who}); this process stops without touching that worker's processing "
            "list (expected one live process per --worker-id)"
        )

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, timeout: float) -> bytes | None:
        """Block up to `timeout` seconds for a task, moving it into this worker's list."""
        return self.client.blmove(self.keys.pending, self.processing, timeout, "RIGHT", "LEFT")

    def try_claim(self) -> bytes | None:
        """Claim without blocking (for serving several queues in priority order)."""
        return self.client.lmove(self.keys.pending, self.processing, "RIGHT", "LEFT")

    def claim_batch(self, n: int) -> list[bytes]:
        """Claim up to `n` tasks without blocking, in one script; oldest first.

        Works while Redis is out of memory (a removal first; allow-oom on Redis >= 7).
        """
        return list(self._run("claim_batch", self._claim_keys, [_bounded(n, "a batch")]))

    def claim_when_full(self) -> bytes | None:
        """Claim one task without blocking while Redis is out of memory (LMOVE is refused)."""
        claimed = self.claim_batch(1)
        return claimed[0] if claimed else None

    # -- outcomes ---------------------------------------------------------------------------
    def ack(self, body: bytes) -> tuple[bool, int]:
        """Remove a finished task and its attempt counter, atomically (one Lua call).

        Returns (still ours, failed attempts before this success); "not ours" means a peer
        recovered the task while it ran. Raises WorkerIdLost when another process holds our id.
        """
        return self.ack_batch([(body, digest(body))])[0]

    def ack_batch(self, items: Sequence[tuple[bytes, str]]) -> list[tuple[bool, int]]:
        """Ack many finished tasks (body, digest) in one script; one `ack` result each.

        Raises WorkerIdLost (and acks none) when another process holds our id.
        """
        if not items:
            return []
        return self._acked(self._run("ack_batch", self._ack_keys, self._ack_args(items)))

    def _ack_args(self, items: Sequence[tuple[bytes, str]]) -> list[Any]:
        args: list[Any] = [self.owner_record]
        for body, body_digest in items[: _bounded(len(items), "a batch")]:
            args += (body, body_digest)
        return args

    def _acked(self, reply: Any) -> list[tuple[bool, int]]:
        self._check_owned(reply)
        return [(bool(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    def ack_and_claim_next(
        self, body: bytes, body_digest: str | None = None, *, scripted_claim: bool = False
    ) -> tuple[tuple[bool, int], bytes | None]:
        """Ack `body` and claim the next task without blocking, in one round trip."""
        acks, claimed = self.ack_batch_and_claim(
            [(body, body_digest or digest(body))], 1, scripted_claim=scripted_claim
        )
        return acks[0], (claimed[0] if claimed else None)

    def ack_batch_and_claim(
        self, items: Sequence[tuple[bytes, str]], n: int, *, scripted_claim: bool
    ) -> tuple[list[tuple[bool, int]], list[bytes]]:
        """Ack `items` and claim up to `n` more tasks without blocking, in one round trip.

        While the queue is busy this halves the round trips per batch. If the ack's reply is
        lost, this raises (the acks may or may not have been applied). If only the claim's
        reply is lost, the acks' outcomes are returned with no task and `claim_lost` is set:
        the caller has `reconcile` return the claim, if it happened. `scripted_claim`:
        claim with the batch script (Redis is full); a claim of one is otherwise an LMOVE,
        after which `claim_refused_oom` tells whether it was refused as out of memory.
        """
        if n == 0:
            self.claim_lost, self.claim_refused_oom = False, None
            return self.ack_batch(items), []
        claims = self._claim_commands(n, scripted_claim)
        ack_args = self._ack_args(items) if items else []
        acks: tuple[tuple[Any, ...], ...] = ()
        if items:
            acks = (self.scripts.command("ack_batch", self._ack_keys, ack_args),)
        replies = self._send_pair(acks + claims)  # written at once: daemon/pipelined.py
        following = replies[len(acks) :]
        self.claim_lost = any(isinstance(reply, ReplyLost) for reply in following)
        self.claim_refused_oom = None
        if not scripted_claim and not isinstance(following[0], ReplyLost):
            self.claim_refused_oom = isinstance(following[0], redis.exceptions.OutOfMemoryError)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            self.preload()  # e.g. Redis restarted: the next pair finds the scripts again
        claimed: list[bytes] = []
        for reply in following:  # refused (OOM, READONLY...) or unknown: no task from it
            if isinstance(reply, list):
                claimed.extend(reply)
            elif reply is not None and not isinstance(reply, Exception):
                claimed.append(reply)
        if not items:
            return [], claimed
        acked = replies[0]
        if isinstance(acked, (redis.exceptions.NoScriptError, *_REDIRECTS)):
            # a redirect: the slot moved (cluster) and nothing ran; the cluster client follows
            # it (the claim after it did not run either: no task, nothing to reconcile)
            acked = self._run("ack_batch", self._ack_keys, ack_args)
        elif isinstance(acked, Exception):
            raise acked
        return self._acked(acked), claimed

    def _claim_commands(self, n: int, scripted: bool) -> tuple[tuple[Any, ...], ...]:
        """The claim of up to `n` sent along with an ack: the batch script while Redis is
        full; otherwise a plain LMOVE first (the oldest task), so that a Redis that became
        full refuses it (OOM) and the consumer learns it, then the script for the rest."""
        if scripted:
            return (self.scripts.command("claim_batch", self._claim_keys, [_bounded(n, "n")]),)
        lmove = ("LMOVE", *self._claim_keys, "RIGHT", "LEFT")
        if n == 1:
            return (lmove,)
        rest = self.scripts.command("claim_batch", self._claim_keys, [_bounded(n - 1, "n")])
        return (lmove, rest)

    def _send_pair(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Written on one connection: on a cluster, one of the node serving the queue's slot
        (every key of the queue is in it); a redirect or a broken connection re-reads the
        slot map, so the next pair finds the slot's node (after a failover or resharding)."""
        try:
            replies = send_at_once(pool_for(self.client, self.keys.pending), commands)
        except (redis.ConnectionError, redis.TimeoutError):
            refresh_slots(self.client)
            raise
        if any(isinstance(reply, (ReplyLost, *_REDIRECTS)) for reply in replies):
            refresh_slots(self.client)
        return replies

    def fail(
        self, body: bytes, entry: bytes, max_attempts: int, retry_base: float, retry_cap: float
    ) -> tuple[str, int, float]:
        """Settle a failed attempt atomically: ("retry", attempts, delay) or ("dead", ...).

        `entry` is the dead-letter document; its "attempts" is set to the final count.
        ("gone", 0, 0) when the task was no longer in this worker's processing list.
        """
        keys = [
            self.processing,
            self.keys.attempts,
            self.keys.delayed,
            self.keys.dead,
            self.alive_key,
            self.keys.stamps,
        ]
        token = os.urandom(TOKEN_BYTES).hex()
        args: list[Any] = [body, digest(body), max_attempts, retry_base, retry_cap, token, entry]
        reply = self._run("fail", keys, [*args, self.owner_record])
        self._check_owned(reply)
        outcome, attempts, delay = reply
        verdict = {-1: "gone", 0: "retry", 1: "dead"}[int(outcome)]
        return verdict, int(attempts), float(delay)

    def dead_letter(self, body: bytes, entry: bytes) -> bool:
        """Move the task from the processing list to the dead letters; False if it was gone."""
        keys = [self.processing, self.keys.dead, self.keys.attempts, self.alive_key]
        keys.append(self.keys.stamps)
        reply = self._run("dead_letter", keys, [body, entry, digest(body), self.owner_record])
        self._check_owned(reply)
        return bool(reply[0])

    def promote_due(self, limit: int = 100) -> int:
        """Move delayed tasks whose time has come back to the front of the pending list."""
        return int(
            self._run("promote", [self.keys.delayed, self.keys.pending], [limit, TOKEN_CHARS])
        )

    # -- liveness and recovery --------------------------------------------------------------
    def take(self, ttl: float, replace: bytes = b"") -> bytes | None:
        """Take our worker id (SET NX, or over `replace`, a dead holder's record).

        Returns None when it is ours now, else the record of the process that holds it.
        """
        ttl_ms = max(1, int(ttl * 1000))
        return self._run("take", [self.alive_key], [self.owner_record, ttl_ms, replace])

    def heartbeat(self, ttl: float) -> None:
        """Say this worker is alive for `ttl` seconds; WorkerIdLost if another process holds it."""
        ttl_ms = max(1, int(ttl * 1000))
        args = [self.owner_record, ttl_ms, time.time(), self.worker]
        holder = self._run("heartbeat", [self.alive_key, self.keys.workers], args)
        if holder is not None:
            raise self.lost(holder)

    def forget_self(self) -> None:
        """On a clean stop: drop the heartbeat so peers and `status` see the worker gone.

        Only while the id is ours: the process that took it over keeps its heartbeat. A
        processing list that still holds tasks stays registered, for peers to recover.
        """
        keys = [self.alive_key, self.keys.workers, self.processing]
        self._run("forget", keys, [self.owner_record, self.worker])

    def release_unstarted(self, bodies: Sequence[bytes]) -> int:
        """Give back claimed tasks never started (given oldest claim first), no attempt counted.

        They go to the front of the pending list, bodies[0] next; atomic. Returns how many
        were still in our processing list. Raises WorkerIdLost when another process holds it.
        """
        if not bodies:
            return 0
        args = [self.owner_record, *bodies[: _bounded(len(bodies), "a batch")]]
        reply = self._run("release", self._own_keys, args)
        self._check_owned(reply)
        return int(reply[0])

    def reconcile(self, keep: Sequence[bytes] = ()) -> Recovered:
        """After a lost claim reply: return our processing list to pending, no attempt counted.

        `keep` lists the tasks this worker holds and will handle (a multiset: each body listed
        stays once). Raises WorkerIdLost when another process holds our id.
        """
        reply = self._run("reconcile", self._own_keys, [self.owner_record, *keep])
        self._check_owned(reply)
        return Recovered(int(reply[0]), [])

    def recover_own(self, max_attempts: int) -> Recovered:
        """At start: return what our previous process held, each a failed attempt.

        A task that kills its worker so ends in the dead letters: the doomed stay in our list
        for `dead_letter`. (Claims whose reply was lost count nothing: `reconcile`.)
        Raises WorkerIdLost when another process holds our id.
        """
        keys = [self.processing, self.keys.pending, self.keys.attempts, self.alive_key]
        reply = self._run("recover_own", keys, [max_attempts, self.owner_record])
        self._check_owned(reply)
        return Recovered(int(reply[0]), list(reply[1]))

    def recover_worker(self, worker: str, max_attempts: int) -> Recovered:
        """Recover the processing list of `worker` if its heartbeat is gone (atomic).

        Each task counts a failed attempt; the doomed land in our list for `dead_letter`.
        """
        keys = [
            self.keys.processing(worker),
            self.keys.pending,
            self.keys.attempts,
            self.processing,
            self.keys.alive(worker),
            self.keys.workers,
        ]
        returned, doomed = self._run("recover_dead_worker", keys, [max_attempts, worker])
        if returned == -1:
            return Recovered(0, [], skipped=True)
        return Recovered(int(returned), list(doomed))

    def known_workers(self) -> list[str]:
        """Workers registered for this queue (alive or not yet recovered)."""
        return [
            w.decode() if isinstance(w, bytes) else w
            for w in self.client.zrange(self.keys.workers, 0, -1)
        ]

    def dead_workers(self) -> list[str]:
        """Known workers other than this one whose heartbeat key is gone."""
        others = [w for w in self.known_workers() if w != self.worker]
        if not others:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker in others:
            pipe.exists(self.keys.alive(worker))
        return [w for w, alive in zip(others, pipe.execute(), strict=True) if not alive]

    def requeue_dead(self, entry: bytes, body: bytes) -> bool:
        """Move one dead letter back to the pending list as its original body."""
        keys = [self.keys.dead, self.keys.pending, self.keys.stamps]
        return bool(self._run("requeue_dead", keys, [entry, body, digest(body)]))
