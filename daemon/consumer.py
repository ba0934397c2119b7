"""The consume loop: claim -> handle -> ack, with heartbeats, recovery, signals and reconnects.

One thread runs the loop; each turn: mark progress, do what is due (heartbeat, promote delayed
retries, recover dead peers, reconcile a lost claim reply: daemon/duties.py), claim while a
handler slot is free (a batch of --prefetch, or one per free slot, in one round trip:
daemon/claims.py), start claimed tasks in free slots (--concurrency: daemon/inflight.py),
settle the finished ones (daemon/settle.py; give-backs: daemon/recovery.py). Redis errors
never end the loop: the fault policy (daemon/faults.py) waits with backoff and goes on; only
errors that waiting cannot cure (wrong password, server too old) raise RedisFatalError (78).

Every task this process holds (claimed ahead, running, finished but not yet acked) is in its
processing list: a kill -9 loses none, each is recovered counting one failed attempt. A stop
(SIGTERM) claims no more, gives the unstarted ones back to the queue front in order with no
attempt counted, lets the running ones finish within --drain-timeout and acks them.
A worker id is held by one live process (daemon/ownership.py): a second one exits 78 or
waits, and a process that finds its id taken over exits 78 without touching its list.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import structlog
from redis.backoff import AbstractBackoff

from daemon import exitcodes, metrics
from daemon.claims import Claimed, Claimer
from daemon.config import Settings
from daemon.connection import make_client
from daemon.duties import MAINTAIN_GRANULARITY, Duties
from daemon.faults import Unknown
from daemon.handlers import Handler
from daemon.heartbeat_keeper import HeartbeatKeeper
from daemon.inflight import InlineSlot, Runs, Slots, Task, make_slots
from daemon.liveness import Progress
from daemon.loop_base import RedisLoop
from daemon.memory import (
    SAFE_POLICY,
    MemoryState,
    eviction_policy,
    report_policy,
    supports_script_flags,
)
from daemon.ownership import IdKeeper, Owner
from daemon.recovery import OrphanClaims, Recovery
from daemon.redis_errors import RedisFatalError
from daemon.redis_url import redact
from daemon.reliable import ReliableQueue, WorkerIdLost, digest
from daemon.settle import Settler

T = TypeVar("T")

BUSY_CLAIM_WAIT = 0.05  # seconds a claim blocks while tasks run: their acks wait that long
ACK_WINDOW = 0.05  # seconds a short task's ack may wait for others to share it (--prefetch)


class Consumer(RedisLoop):
    """Consumes the configured queues until asked to stop."""

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        *,
        client: redis.Redis | None = None,
        aux_client: redis.Redis | None = None,
        backoff: AbstractBackoff | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = settings.worker_id
        log = structlog.get_logger("taskd.consumer").bind(worker=self.worker)
        lost = "tasks left in the processing list; they will be recovered"
        super().__init__(
            settings,
            log,
            role="consumer",
            lost=lost,
            backoff=backoff,
            progress=progress,
            clock=clock,
        )
        self.handler = handler
        self.client = client or make_client(settings, client_name=f"taskd-claim:{self.worker}")
        self.aux_client = aux_client or make_client(
            settings, client_name=f"taskd-aux:{self.worker}"
        )
        self.orphans = OrphanClaims(self.client, self.worker, self.log)
        self.owner = Owner.current()
        groups = [
            [ReliableQueue(self.client, q, self.worker, self.owner) for q in shards]
            for shards in settings.queue_shards
        ]
        self.queues = [q for group in groups for q in group]  # every shard of every queue
        self.memory = MemoryState(self.link, self.log)
        batch = max(settings.prefetch, settings.concurrency)
        self.claimer = Claimer(groups, self.memory, self.stop_requested, clock, batch)
        self.faults.on_reconnect.append(self._reconnected)
        self.faults.on_disconnect.append(self._link_lost)
        self.faults.on_oom.append(lambda: self.claimer.memory_seen(True))
        self._server_checked = False  # the startup check (script flags, policy) is done
        self._episode_checked = False  # ... or the check of this connection episode
        self._started = False
        self._ids = IdKeeper(
            self.queues, self.owner, settings.heartbeat_ttl, self.log, self.stop_requested.wait
        )
        self._heartbeat_keeper = HeartbeatKeeper(
            [
                ReliableQueue(self.aux_client, q, self.worker, self.owner)
                for q in settings.served_queues
            ],
            settings.heartbeat_ttl,
            self.log,
            self.progress,
        )
        metrics.preexport(settings.served_queues)
        self.metrics = {q: metrics.QueueMetrics(q) for q in settings.served_queues}
        self.recovery = Recovery(
            self.queues, self.worker, settings.max_attempts, self.metrics, self.log
        )
        self.duties = Duties(
            settings, self.queues, self.recovery, self.link, lambda: self.held, clock, self.log
        )
        self.settler = Settler(self)
        self.slots: Slots = InlineSlot(handler, self._runs())  # begin() makes the real ones
        self.held: list[Task] = []  # claimed and not settled: what our processing lists hold
        self.unstarted: deque[Task] = deque()  # claimed ahead (--prefetch), oldest first
        self.finished: list[Task] = []  # handled, waiting for their ack

    def _runs(self) -> Runs:
        return Runs(self.progress, self.metrics, self.clock)

    # -- the loop (its frame: daemon/loop_base.py) ------------------------------------------
    def started_fields(self) -> dict[str, Any]:
        """The fields of the consumer.started line."""
        s = self.settings
        return {
            "queues": list(s.queues),
            "shards": s.shards,
            "redis": redact(s.redis_url),
            "block_timeout": s.block_timeout,
            "socket_timeout": s.socket_timeout,
            "max_attempts": s.max_attempts,
            "prefetch": s.prefetch,
            "concurrency": s.concurrency,
            "pid": os.getpid(),
        }

    def begin(self) -> None:
        """Handler threads (or the event loop) and the heartbeat keeper: only when running."""
        self.slots = make_slots(self.settings.concurrency, self.handler, self._runs(), self.log)
        self._heartbeat_keeper.start()

    def turn(self) -> None:
        """One turn: duties, claim, start, settle."""
        self._turn_once(self.slots)

    def end(self) -> None:
        """Stopping: the tasks in flight finish (the drain timer bounds it), then goodbye."""
        while self.held:
            self._turn_once(self.slots)
        self._shutdown()

    def crashed(self, exc: Exception) -> None:
        """A worker id taken over by another process is said in a line of its own (exit 78)."""
        if isinstance(exc, WorkerIdLost):
            self.log.error("worker.id_lost", error=str(exc), exit_code=exitcodes.CONFIG)

    def close(self) -> None:
        """The heartbeat keeper and the handler slots stop (handlers still running end with
        the process)."""
        self._heartbeat_keeper.stop()
        self.slots.close()

    def _turn_once(self, slots: Slots) -> None:
        self.faults.attempt()
        self.progress.mark()
        try:
            if not self._started:
                self._startup()
                self.faults.succeeded()  # before blocking in the first claim: /readyz at once
                if not self._started:  # waiting for our worker id
                    return
            sent = self.duties.run(self.clock())
            if self.stop_requested.is_set():
                sent = self._release_unstarted() or sent
            elif not self.unstarted and slots.running < slots.capacity:
                wait = BUSY_CLAIM_WAIT if slots.running else self.settings.block_timeout
                self._hold(self.claimer.claim(wait, self._batch(slots)))
                self.progress.work_done()  # tasks, or the queue was empty: no stall
                sent = True
                if self.held:  # maybe after an idle stretch: beat before a long task starts
                    self.duties.beat_if_due(self.clock())
        except Exception as exc:
            # tasks claimed ahead may meanwhile be recovered by a peer: let a reconciliation
            # (the next turn's, or the one after the reconnect) return them, not run them late
            if self.unstarted:
                self._forget(list(self.unstarted))
                self.unstarted.clear()
                self.duties.reconcile_soon()
            self.faults.failed(exc, interruptible=True)
            return
        if sent:  # only a command that went through says Redis is back
            self.faults.succeeded()
        while self.unstarted and slots.running < slots.capacity:
            if self.stop_requested.is_set():
                break
            slots.start(self.unstarted.popleft())
        self._settle_finished(slots)

    def _hold(self, claimed: Claimed) -> None:
        taken: dict[ReliableQueue, int] = {}  # a claim's tasks are of one queue
        for queue, _ in claimed:
            taken[queue] = taken.get(queue, 0) + 1
        for queue, n in taken.items():
            self.claimer.turns.took(queue, n)
        for queue, body in claimed:
            task = Task(queue, body, digest(body))
            self.metrics[task.queue_name].claimed.inc()
            self.held.append(task)
            self.unstarted.append(task)

    def _forget(self, tasks: list[Task]) -> None:
        """`tasks` are no longer ours to settle (settled, given back, or left to recovery)."""
        if len(tasks) == 1 and self.held and self.held[0] is tasks[0]:
            del self.held[0]  # the common case: the oldest task, settled alone
            return
        gone = {id(t) for t in tasks}
        self.held = [t for t in self.held if id(t) not in gone]

    def _settle_finished(self, slots: Slots) -> None:
        """Collect finished tasks and settle them, together when they finish together."""
        stopping = self.stop_requested.is_set()
        wait = 0.0
        if slots.running and (slots.running >= slots.capacity or stopping):
            wait = MAINTAIN_GRANULARITY  # nothing else to do until one finishes
            if self.finished:
                wait = min(wait, self.finished[0].finished_at + ACK_WINDOW - self.clock())
        self.finished += slots.collect(max(0.0, wait))
        if not self.finished:
            return
        if (
            not stopping
            and self.unstarted
            and len(self.finished) < self.settings.prefetch
            and self.clock() - self.finished[0].finished_at < ACK_WINDOW
            and self.finished[-1].duration < ACK_WINDOW
        ):
            return  # short tasks: more will finish soon, and one ack serves them all
        batch, self.finished = self.finished, []
        lost = self._heartbeat_keeper.lost
        if lost is not None:  # another process holds our id now
            raise lost
        room = not stopping and not self.unstarted and slots.running < slots.capacity
        self._hold(self.settler.settle(batch, self._batch(slots) if room else 0))

    def _batch(self, slots: Slots) -> int:
        """How many tasks to claim at once: --prefetch, or enough for every free slot."""
        return max(self.settings.prefetch, slots.capacity - slots.running)

    def _release_unstarted(self) -> bool:
        """Stopping: tasks claimed ahead go back to the queue front, in order, no attempt."""
        if not self.unstarted:
            return False
        self.recovery.release([(t.queue, t.body) for t in self.unstarted])
        self._forget(list(self.unstarted))
        self.unstarted.clear()
        return True

    def _startup(self) -> None:
        """Check the server, take our worker id, return what our last process held."""
        if not self._server_checked:  # once: not again on every turn spent waiting for the id
            self._check_server(startup=True)
            self._server_checked = True
        if not self._ids.take():
            # Waiting for an id held elsewhere is not a stall: /healthz stays 200, /readyz
            # says why this process does not consume.
            self.progress.waiting = self._ids.waiting
            self.progress.work_done()
            return
        self.progress.waiting = ""
        for queue in self.queues:
            self.recovery.recover_own(queue)
            queue.heartbeat(self.settings.heartbeat_ttl)
        self.duties.beaten(self.clock())
        self._started = True

    def _check_server(self, startup: bool) -> None:
        """After each (re)connect: script flags for the server's version, eviction policy.

        Never raises but at startup with --require-noeviction (a RedisFatalError, exit 78).
        """
        flagged = supports_script_flags(self.client)
        for queue in self.queues + self._heartbeat_keeper.queues:
            queue.use_allow_oom(flagged)
        self.queues[0].preload()  # every queue runs the same scripts on the same server
        policy = eviction_policy(self.client)
        if startup and self.settings.require_noeviction and policy != SAFE_POLICY:
            found = f"maxmemory-policy is {policy}" if policy else "maxmemory-policy is unreadable"
            raise RedisFatalError(
                f"redis {redact(self.settings.redis_url)}: {found}; expected {SAFE_POLICY} "
                "(--require-noeviction: any other policy lets Redis evict tasks or heartbeats)"
            )
        if startup or policy != self.link.eviction_policy or policy != SAFE_POLICY:
            report_policy(policy, self.link, self.log)
        self._episode_checked = True

    def claim_reply_lost(self) -> None:
        """The ack's reply came, the claim's did not: return the claim at the next turn.

        The claim is non-blocking, so once the connection broke it either moved tasks in or
        never will: one reconciliation, before the next claim, settles it.
        """
        self.log.debug("claim.reply_uncertain", note="connection broke after the ack's reply")
        self.duties.reconcile_soon()

    # -- settling under the fault policy ----------------------------------------------------
    def settle(self, operation: Callable[[], T], event: str, tasks: list[Task]) -> T | None:
        """Carry out the ack or failure of `tasks`; None when its outcome became unknown.

        Refused or never sent (Redis down, READONLY, LOADING...): sent again after the
        backoff, for as long as it takes (the drain timer bounds a stop). Sent but
        unanswered: it may have been applied, so it is not re-sent (`_settle_uncertain`).
        """
        self._forget(tasks)  # from here a reconciliation must not keep them
        settled = self.faults.settle(operation)
        if settled.refusals:  # a claim sent along with a refused ack: returned next turn
            self.duties.reconcile_soon()
        if isinstance(settled, Unknown):
            self._settle_uncertain(settled.error, event, tasks)
            return None
        self.progress.work_done()
        return settled.value

    def _settle_uncertain(self, exc: Exception, event: str, tasks: list[Task]) -> None:
        """The reply to an ack or a failure was lost: it may or may not have been applied.

        Re-sending it could act on another copy of the same body (an unseen claim), so
        instead what this worker's list holds beyond the tasks it still handles goes back to
        the queue front: an applied outcome stays applied, an unapplied one means the task
        runs again (at-least-once).
        """
        self.faults.call(lambda: self.duties.reconcile("settle_reply_lost"), interruptible=False)
        context = {"queue": tasks[0].queue_name, "task": tasks[0].id} if tasks else {}
        with structlog.contextvars.bound_contextvars(**context):
            self.log.warning(
                event,
                error=f"{type(exc).__name__}: {exc}",
                tasks=len(tasks),
                note="reply lost; what this worker held went back to the queue; "
                "the task may run again",
            )

    # -- reactions to the link --------------------------------------------------------------
    def _reconnected(self) -> None:
        """An outage ended: check the server again, close orphans, plan the reconciliations."""
        if not self._episode_checked:  # maybe another server (failover, restart)
            with contextlib.suppress(redis.RedisError):  # the next reconnect reads it again
                self._check_server(startup=False)
        self.orphans.kill()
        self.duties.reconnected()

    def _link_lost(self) -> None:
        self._episode_checked = False  # check the server again once we are back
        self.memory.forget()  # full or not: unknown until Redis answers again

    def _shutdown(self) -> None:
        """Leave nothing behind: return unseen claims, say goodbye."""
        if not self._started:  # nothing claimed yet; give back the ids taken so far
            self._ids.release()
            return
        try:
            self.orphans.kill()  # a claim still blocked on a dead connection
            self.duties.reconcile("shutdown")
            for queue in self.queues:
                queue.forget_self()
        except redis.RedisError as exc:
            self.log.warning(
                "consumer.shutdown_incomplete",
                error=str(exc),
                note="heartbeat expires by itself; a peer or the next start recovers the rest",
            )
