"""The consume loop: claim -> handle -> ack, with heartbeats, recovery, signals and reconnects.

One turn of the loop: mark progress, do what is due (heartbeat, promote delayed retries,
recover dead peers, reconcile a lost claim reply), claim with a finite deadline, handle.
Redis errors never end the loop: it waits with backoff and goes on; only errors that waiting
cannot cure (wrong password, server too old) raise RedisFatalError (exit 78).

Redis full (OOM under noeviction) is not Redis down: the loop claims with a non-blocking
allow-oom script (polling) and settles with allow-oom scripts, so the queue keeps draining;
a plain claim every OOM_PROBE_EVERY seconds tells when Redis accepts writes again.
A worker id is held by one live process (daemon/ownership.py): a second one exits 78 or
waits, and a process that finds its id taken over exits 78 without touching its list.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import structlog
from redis.backoff import AbstractBackoff

from daemon import exitcodes, metrics
from daemon.config import Settings
from daemon.connection import (
    LinkState,
    RedisFatalError,
    fatal_reason,
    is_transient,
    make_backoff,
    make_client,
    maybe_applied,
)
from daemon.handlers import Handler
from daemon.lifecycle import GracefulStop
from daemon.liveness import Progress
from daemon.memory import (
    SAFE_POLICY,
    MemoryState,
    eviction_policy,
    report_policy,
    supports_script_flags,
)
from daemon.ownership import IdKeeper, Owner
from daemon.redis_url import redact
from daemon.reliable import (
    ReliableQueue,
    WorkerIdLost,
    dead_letter_entry,
    digest,
    safe_text,
)
from daemon.task_heartbeat import TaskHeartbeat, describe_error

T = TypeVar("T")

HEARTBEAT_EVERY = 1.0  # seconds between heartbeats of a busy worker
PROMOTE_EVERY = 1.0  # seconds between moves of due retries back to pending
MAINTAIN_GRANULARITY = 0.1  # seconds: how often the loop looks at what is due
MAX_TRACEBACK = 4000  # characters of a handler's traceback kept in its failure log line
OOM_POLL = 0.3  # seconds between claims of an empty queue while Redis is out of memory
OOM_PROBE_EVERY = 0.5  # seconds between plain claims that tell whether Redis is still full


class Consumer:
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
        self.settings = settings
        self.handler = handler
        self.worker = settings.worker_id
        self.log = structlog.get_logger("taskd.consumer").bind(worker=self.worker)
        self.client = client or make_client(settings, client_name=f"taskd-claim:{self.worker}")
        self.aux_client = aux_client or make_client(
            settings, client_name=f"taskd-aux:{self.worker}"
        )
        # Server-side ids of the claim connections this process opened: the only ones that
        # `_kill_orphan_claims` may close (another process may share our name).
        self._claim_ids: set[int] = set()
        _track_connection_ids(self.client, self._claim_ids)
        self.owner = Owner.current()
        self.queues = [
            ReliableQueue(self.client, q, self.worker, self.owner) for q in settings.queues
        ]
        self.link = LinkState(backoff or make_backoff(settings), self.log, clock=clock)
        self.memory = MemoryState(self.link, self.log)
        self._oom_probe_at = 0.0
        self._server_checked = False  # the startup check (script flags, policy) is done
        self._episode_checked = False  # ... or the check of this connection episode
        self.link.listeners.append(lambda up: metrics.REDIS_CONNECTED.set(1 if up else 0))
        self.progress = progress or Progress(clock)
        self.clock = clock
        self.stop = GracefulStop(
            "consumer",
            settings.drain_timeout,
            self.log,
            self.progress,
            "task left in the processing list; it will be recovered",
        )
        self.stop_requested = self.stop.requested
        self._never = threading.Event()  # waits that a stop must not cut short
        self._started = False
        self._reconcile_at: list[float] = []  # when to look for lost claim replies
        self._next: dict[str, float] = {}
        self._turn = 0
        self._maintain_after = 0.0
        self._attempt_started = clock()
        self._ids = IdKeeper(
            self.queues, self.owner, settings.heartbeat_ttl, self.log, self.stop_requested.wait
        )
        self._task_heartbeat = TaskHeartbeat(
            [ReliableQueue(self.aux_client, q, self.worker, self.owner) for q in settings.queues],
            settings.heartbeat_ttl,
            self.log,
            self.progress,
        )
        metrics.preexport(settings.queues)
        self._metrics = {q: metrics.QueueMetrics(q) for q in settings.queues}
        self._next_task: tuple[ReliableQueue, bytes] | None = None  # claimed with the last ack

    def request_stop(self, signum: int = 15, _frame: Any = None) -> None:
        """First signal: stop claiming and drain. Second signal: exit at once."""
        self.stop.request(signum, _frame)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Consume until stopped; returns the exit code (0 after a clean drain)."""
        s = self.settings
        self.log.info(
            "consumer.started",
            queues=list(s.queues),
            redis=redact(s.redis_url),
            block_timeout=s.block_timeout,
            socket_timeout=s.socket_timeout,
            max_attempts=s.max_attempts,
            pid=os.getpid(),
        )
        self._task_heartbeat.start()
        try:
            while not self.stop_requested.is_set():
                self._turn_once()
            self._shutdown()
        except WorkerIdLost as exc:
            self.log.error("worker.id_lost", error=str(exc), exit_code=exitcodes.CONFIG)
            raise
        finally:
            self._task_heartbeat.stop()
            self.stop.finished()
        self.log.info("consumer.stopped", exit_code=exitcodes.OK)
        return exitcodes.OK

    def _turn_once(self) -> None:
        self._attempt_started = self.clock()
        self.progress.mark()
        try:
            if not self._started:
                self._startup()
                self._redis_ok()  # before blocking in the first claim: /readyz answers at once
                if not self._started:  # waiting for our worker id
                    return
            self._maintain()
            claimed = self._next_task
            self._next_task = None
            if claimed is None:
                claimed = self._claim()
                self.progress.work_done()  # a task, or the queue was empty: no stall
        except Exception as exc:
            # a task claimed ahead may meanwhile be recovered by a peer: let the
            # reconciliation after the reconnect return it instead of running it late
            self._next_task = None
            self._redis_failed(exc, interruptible=True)
            return
        self._redis_ok()
        if claimed is not None:
            self._process(*claimed)

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
            recovered = queue.return_own(self.settings.max_attempts, count_attempt=True)
            if recovered.returned or recovered.doomed:
                self.log.warning(
                    "recovery.own_tasks",
                    queue=queue.keys.queue,
                    returned=recovered.returned,
                    dead_lettered=len(recovered.doomed),
                    note="held when this worker last stopped; counted as a failed attempt",
                )
                self._metrics[queue.keys.queue].recovered.inc(
                    recovered.returned + len(recovered.doomed)
                )
            self._dead_letter_doomed(queue, recovered.doomed, self.worker)
            queue.heartbeat(self.settings.heartbeat_ttl)
        self._started = True

    def _check_server(self, startup: bool) -> None:
        """After each (re)connect: script flags for the server's version, eviction policy.

        Never raises but at startup with --require-noeviction (a RedisFatalError, exit 78).
        """
        flagged = supports_script_flags(self.client)
        for queue in self.queues + self._task_heartbeat.queues:
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

    def _due(self, name: str, every: float, now: float) -> bool:
        if now >= self._next.get(name, 0.0):
            self._next[name] = now + every
            return True
        return False

    def _maintain(self) -> None:
        now = self.clock()
        if now < self._maintain_after:  # the hot path: nothing is due yet
            return
        self._maintain_after = now + MAINTAIN_GRANULARITY
        s = self.settings
        if self._due("heartbeat", min(HEARTBEAT_EVERY, s.heartbeat_ttl / 3), now):
            for queue in self.queues:
                queue.heartbeat(s.heartbeat_ttl)
        if self._due("promote", PROMOTE_EVERY, now):
            for queue in self.queues:
                queue.promote_due()
        # Not in the turn that ends an outage: peers get one heartbeat TTL to beat again
        # first (see _redis_ok), and our own lost claims are reconciled right after it.
        if self.link.connected and self._due("recover", s.recovery_interval, now):
            self._recover_dead_peers()
            self._reconcile("periodic")
        if any(t <= now for t in self._reconcile_at):
            self._reconcile_at = [t for t in self._reconcile_at if t > now]
            self._reconcile("after_reconnect")

    def _claim(self) -> tuple[ReliableQueue, bytes] | None:
        """Claim the next task: blocking while Redis takes writes, polling while it is full."""
        if self.memory.full:
            return self._claim_when_full()
        try:
            return self._claim_plain()
        except redis.exceptions.OutOfMemoryError:
            self._memory_seen(True)
            return self._claim_when_full()

    def _memory_seen(self, refused: bool | None) -> None:
        """A plain claim was refused as OOM (True) or carried out (False); None: no news."""
        if refused is None:
            return
        if refused:
            self._oom_probe_at = self.clock() + OOM_PROBE_EVERY
        self.memory.update(refused)

    def _claim_when_full(self) -> tuple[ReliableQueue, bytes] | None:
        """Redis is full: BLMOVE/LMOVE are refused, so claim by an allow-oom script, polling.

        Every OOM_PROBE_EVERY seconds a plain claim is tried instead: once Redis takes it,
        the loop goes back to the blocking claim.
        """
        if self.clock() >= self._oom_probe_at:
            try:
                claimed = self._try_claim_each()
            except redis.exceptions.OutOfMemoryError:
                self._memory_seen(True)
            else:
                self._memory_seen(False)
                return claimed
        for queue in self.queues:
            body = queue.claim_when_full()
            if body is not None:
                return queue, body
        self.stop_requested.wait(OOM_POLL)
        return None

    def _try_claim_each(self) -> tuple[ReliableQueue, bytes] | None:
        for queue in self.queues:  # priority: the order given
            body = queue.try_claim()
            if body is not None:
                return queue, body
        return None

    def _claim_plain(self) -> tuple[ReliableQueue, bytes] | None:
        timeout = self.settings.block_timeout
        if len(self.queues) == 1:
            body = self.queues[0].claim(timeout)
            return (self.queues[0], body) if body is not None else None
        claimed = self._try_claim_each()
        if claimed is not None:
            return claimed
        queue = self.queues[self._turn % len(self.queues)]
        self._turn += 1
        body = queue.claim(max(0.1, timeout / len(self.queues)))
        return (queue, body) if body is not None else None

    # -- one task ---------------------------------------------------------------------------
    def _process(self, queue: ReliableQueue, body: bytes) -> None:
        name = queue.keys.queue
        m = self._metrics[name]
        task_digest = digest(body)
        task_id = task_digest[:12]
        m.claimed.inc()
        structlog.contextvars.bind_contextvars(queue=name, task=task_id)
        self.progress.task_started(f"{name}:{task_id}")
        self._task_heartbeat.busy = True
        m.in_progress.inc()
        started = time.perf_counter()
        error: str | None = None
        trace = ""
        try:
            self.handler(body)
        except Exception as exc:
            error = describe_error(exc)
            trace = safe_text(traceback.format_exc()[-MAX_TRACEBACK:])
        finally:
            duration = time.perf_counter() - started
            self._task_heartbeat.busy = False
            # The handler is done: from here the task timeout no longer applies, so a long
            # Redis outage while settling is waited out (progress is marked per retry).
            self.progress.task_finished()
            m.in_progress.dec()
            m.duration.observe(duration)
        try:
            if self._task_heartbeat.lost is not None:  # another process holds our id now
                raise self._task_heartbeat.lost
            if error is None:
                self._succeeded(queue, body, duration, task_digest)
            else:
                self._failed(queue, body, error, duration, trace)
        finally:
            structlog.contextvars.unbind_contextvars("queue", "task")

    def _succeeded(
        self, queue: ReliableQueue, body: bytes, duration: float, task_digest: str
    ) -> None:
        m = self._metrics[queue.keys.queue]

        def ack() -> tuple[tuple[bool, int], bytes | None]:
            if queue is self.queues[0] and not self.stop_requested.is_set():
                # ack and claim the next task of the first (highest priority) queue at once;
                # while Redis is full the claim is the allow-oom script, but for a probe
                scripted = self.memory.full and self.clock() < self._oom_probe_at
                settled = queue.ack_and_claim_next(body, task_digest, scripted_claim=scripted)
                self._memory_seen(queue.claim_refused_oom)
                if queue.claim_lost:
                    self._claim_reply_lost()
                return settled
            return queue.ack(body), None

        settled = self._settle(ack, "task.ack_uncertain")
        if settled is None:
            return
        outcome, following = settled
        if following is not None:
            self._next_task = (queue, following)
        acked, previous_failures = outcome
        m.last_success.set_to_current_time()
        fields = {"attempt": previous_failures + 1, "duration": round(duration, 6)}
        if acked:
            m.acked.inc()
            self.log.info("task.done", **fields)
        else:
            m.done_but_recovered.inc()  # the ack removed nothing: a peer had recovered it
            self.log.warning(
                "task.done_but_recovered",
                note="a peer recovered this task while it ran (heartbeat lost?); it may run twice",
                **fields,
            )

    def _claim_reply_lost(self) -> None:
        """The ack's reply came, the claim's did not: return the claim at the next turn.

        The claim is non-blocking (LMOVE), so once the connection broke it either moved a
        task in or never will: one reconciliation, before the next claim, settles it.
        """
        self.log.debug("claim.reply_uncertain", note="connection broke after the ack's reply")
        self._reconcile_at.append(self.clock())
        self._maintain_after = 0.0

    def _failed(
        self, queue: ReliableQueue, body: bytes, error: str, duration: float, trace: str
    ) -> None:
        m = self._metrics[queue.keys.queue]
        m.failed.inc()
        s = self.settings
        entry = dead_letter_entry(body, error, 0, self.worker, time.time())
        settled = self._settle(
            lambda: queue.fail(body, entry, s.max_attempts, s.retry_base, s.retry_cap),
            "task.fail_uncertain",
        )
        if settled is None:
            return
        verdict, attempts, delay = settled
        fields = {"attempt": attempts, "error": error, "duration": round(duration, 6)}
        if verdict == "dead":
            m.dead_lettered.inc()
            self.log.error("task.dead_lettered", traceback=trace, **fields)
        elif verdict == "retry":
            m.retried.inc()
            self.log.warning("task.failed", retry_in=round(delay, 3), traceback=trace, **fields)
        else:
            self.log.warning(
                "task.failed_but_recovered",
                note="a peer recovered this task while it ran (heartbeat lost?); it may run twice",
                **fields,
            )

    def _settle(self, operation: Callable[[], T], event: str) -> T | None:
        """Carry out an ack or a failure; None when its outcome became unknown.

        Refused or never sent (Redis down, READONLY, LOADING...): wait and send it again,
        for as long as it takes (the drain timer bounds a stop). Sent but unanswered: it may
        have been applied, so it is not re-sent (see `_settle_uncertain`).
        """
        while True:
            self._attempt_started = self.clock()
            try:
                result = operation()
            except Exception as exc:
                if maybe_applied(exc):
                    self._settle_uncertain(exc, event)
                    return None
                self._redis_failed(exc, interruptible=False)
                # a claim sent along with a refused ack is returned at the next turn
                self._reconcile_at.append(self.clock())
                continue
            self._redis_ok()
            self.progress.work_done()
            return result

    def _settle_uncertain(self, exc: Exception, event: str) -> None:
        """The reply to an ack or a failure was lost: it may or may not have been applied.

        Re-sending it could act on another copy of the same body (an unseen claim), so
        instead everything this worker holds goes back to the queue front: an applied
        outcome stays applied, an unapplied one means the task runs again (at-least-once).
        """
        self._redis_failed(exc, interruptible=False)
        self._next_task = None
        self._call(lambda: self._reconcile("settle_reply_lost"))
        self.log.warning(
            event,
            error=f"{type(exc).__name__}: {exc}",
            note="reply lost; what this worker held went back to the queue; the task may run again",
        )

    # -- recovery ---------------------------------------------------------------------------
    def _recover_dead_peers(self) -> None:
        for queue in self.queues:
            for worker in queue.dead_workers():
                recovered = queue.recover_worker(worker, self.settings.max_attempts)
                if recovered.skipped:
                    continue
                total = recovered.returned + len(recovered.doomed)
                if total:
                    self._metrics[queue.keys.queue].recovered.inc(total)
                self.log.warning(
                    "recovery.dead_worker",
                    queue=queue.keys.queue,
                    dead_worker=worker,
                    returned=recovered.returned,
                    dead_lettered=len(recovered.doomed),
                )
                self._dead_letter_doomed(queue, recovered.doomed, worker)

    def _dead_letter_doomed(self, queue: ReliableQueue, doomed: list[bytes], holder: str) -> None:
        """Tasks whose holder died once too often: each a failed attempt, now the last."""
        for body in doomed:
            entry = dead_letter_entry(
                body,
                f"worker {holder} stopped while handling the task "
                "(killed, crashed or hung past --task-timeout)",
                self.settings.max_attempts,
                holder,
                time.time(),
            )
            if not queue.dead_letter(body, entry):
                self.log.warning(
                    "task.dead_letter_skipped",
                    queue=queue.keys.queue,
                    task=digest(body)[:12],
                    note="no longer in this worker's processing list; nothing was moved",
                )
                continue
            self._metrics[queue.keys.queue].dead_lettered.inc()
            self.log.error(
                "task.dead_lettered",
                queue=queue.keys.queue,
                task=digest(body)[:12],
                attempt=self.settings.max_attempts,
                error="its worker died while handling it",
            )

    def _reconcile(self, why: str) -> None:
        """Return claims whose reply never reached us.

        Between tasks our processing lists hold nothing but the task claimed with the last
        ack (`_next_task`), which is kept.
        """
        held = self._next_task
        for queue in self.queues:
            keep = held[1] if held is not None and held[0] is queue else None
            recovered = queue.return_own(self.settings.max_attempts, False, keep=keep)
            if recovered.returned:
                self.log.warning(
                    "claim.reply_lost",
                    queue=queue.keys.queue,
                    returned=recovered.returned,
                    why=why,
                    note="task moved to our processing list but the reply was lost; returned",
                )

    # -- Redis errors -----------------------------------------------------------------------
    def _call(self, operation: Callable[[], T]) -> T:
        """Run an idempotent Redis operation that must happen (a reconciliation) until it does.

        A stop does not interrupt it; the drain timer bounds the whole stop instead.
        """
        while True:
            self._attempt_started = self.clock()
            try:
                result = operation()
            except Exception as exc:
                self._redis_failed(exc, interruptible=False)
                continue
            self._redis_ok()
            return result

    def _redis_ok(self) -> None:
        if self.link.succeeded():
            self._maintain_after = 0.0  # reconcile at the next turn
            metrics.REDIS_RECONNECTS.inc()
            if not self._episode_checked:  # maybe another server (failover, restart)
                with contextlib.suppress(redis.RedisError):  # the next reconnect reads it again
                    self._check_server(startup=False)
            self._kill_orphan_claims()
            # Look for claims whose reply was lost at the start of the next turn (when we
            # hold nothing), and once more after a block timeout: a claim still blocked on
            # the dead connection may move a task in until the server gives up on it.
            now = self.clock()
            self._reconcile_at += [now, now + self.settings.socket_timeout]
            # Peers were cut off too: give them one heartbeat TTL to beat again before their
            # in-flight tasks are taken for dead (that would only cost a duplicate run).
            self._next["recover"] = now + self.settings.heartbeat_ttl

    def _redis_failed(self, exc: Exception, interruptible: bool) -> None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            # Redis answered: it is up but full. Not an outage; try again soon (the drain
            # itself frees memory).
            metrics.REDIS_ERRORS.labels(kind=type(exc).__name__).inc()
            self._redis_ok()
            self._memory_seen(True)
            self.progress.mark()
            (self.stop_requested if interruptible else self._never).wait(OOM_POLL)
            return
        if not is_transient(exc):
            if isinstance(exc, redis.RedisError):
                raise RedisFatalError(fatal_reason(exc, self.settings.redis_url)) from exc
            raise exc
        metrics.REDIS_ERRORS.labels(kind=type(exc).__name__).inc()
        # Backoff runs from the start of the failed attempt: an attempt that hung until its
        # deadline has already waited, so "Redis is back" is noticed within the backoff cap.
        spent = self.clock() - self._attempt_started
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            self._episode_checked = False  # check the server again once we are back
            self.memory.forget()  # full or not: unknown until Redis answers again
        delay = max(0.0, self.link.failed(exc) - spent)
        self.log.debug("redis.retry", error=str(exc), delay=round(delay, 3))
        self.progress.mark()
        (self.stop_requested if interruptible else self._never).wait(delay)

    def _kill_orphan_claims(self) -> None:
        """Close our own claim connections the server still thinks are alive (half-open).

        Only connections this process opened (by server-side id): consumers of other queues
        may share our worker id, and so the connection name.
        """
        if not self._claim_ids:
            return
        try:
            me = self.client.client_id()
            name = f"taskd-claim:{self.worker}"
            listed = set()
            for info in self.client.client_list():
                cid = int(info.get("id", me))
                listed.add(cid)
                if cid in self._claim_ids and cid != me and info.get("name") == name:
                    self.client.client_kill_filter(_id=str(cid))
                    self.log.info("redis.orphan_connection_closed", client_id=cid)
            self._claim_ids.intersection_update(listed)  # forget connections long gone
        except redis.RedisError as exc:  # NOPERM under a strict ACL: the reconcile still works
            self.log.debug("redis.orphan_check_skipped", error=str(exc))

    def _shutdown(self) -> None:
        """Leave nothing behind: return unseen claims (and the one claimed ahead), say goodbye."""
        self._next_task = None
        if not self._started:  # nothing claimed yet; give back the ids taken so far
            self._ids.release()
            return
        try:
            self._kill_orphan_claims()  # a claim still blocked on a dead connection
            self._reconcile("shutdown")
            for queue in self.queues:
                queue.forget_self()
        except redis.RedisError as exc:
            self.log.warning(
                "consumer.shutdown_incomplete",
                error=str(exc),
                note="heartbeat expires by itself; a peer or the next start recovers the rest",
            )


def _track_connection_ids(client: redis.Redis, ids: set[int]) -> None:
    """Record the server-side id (CLIENT ID) of every connection `client` opens.

    Wraps the pool's connect hook: one command per new connection, none per task. Where an
    ACL forbids CLIENT ID, nothing is recorded and no connection is ever closed.
    """
    pool: Any = client.connection_pool
    original = pool.connection_kwargs.get("redis_connect_func")

    def connect(connection: Any) -> None:
        if original is not None:
            original(connection)
        else:
            connection.on_connect()
        try:
            connection.send_command("CLIENT", "ID")
            ids.add(int(connection.read_response()))
        except redis.ResponseError:
            pass

    pool.connection_kwargs["redis_connect_func"] = connect
