"""Settling finished tasks: successes acked, failures retried or dead-lettered.

The successes of one queue that finished together are acked in one script; when the loop
wants more work, the ack of the queue claims go to now (the highest priority queue; of a
sharded one, the shard whose turn it is: daemon/claims.py) carries the next claim with it,
in the same round trip. A failure is settled on its own (one script counts the attempt and
schedules the retry or dead-letters it). Whether an outcome may have been applied is the
fault policy's call (`Consumer.settle`): an unknown outcome is never sent again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from daemon.claims import Claimed
from daemon.dead_letters import dead_letter_entry
from daemon.inflight import Task
from daemon.reliable import ReliableQueue

if TYPE_CHECKING:
    from daemon.consumer import Consumer

_RECOVERED_NOTE = "a peer recovered this task while it ran (heartbeat lost?); it may run twice"


class Settler:
    """Settles the finished tasks of one consumer."""

    def __init__(self, consumer: Consumer) -> None:
        self.c = consumer

    def settle(self, tasks: list[Task], claim: int) -> Claimed:
        """Settle `tasks`; with `claim` > 0 the ack of the queue whose turn it is claims up
        to that many more, which are returned (oldest first)."""
        claimed: Claimed = []
        first = self.c.claimer.turns.first()
        for queue in self.c.queues:
            done = [t for t in tasks if t.queue is queue and t.error is None]
            if done:  # only an ack carries a claim; without one the next turn claims
                claimed += self._ack(queue, done, claim if queue is first else 0)
        for task in tasks:
            if task.error is not None:
                self._failed(task)
        return claimed

    def _ack(self, queue: ReliableQueue, done: list[Task], claim: int) -> Claimed:
        items = [(t.body, t.digest) for t in done]

        def ack() -> tuple[list[tuple[bool, int]], list[bytes]]:
            if not claim:
                return queue.ack_batch(items), []  # the digests are known: not hashed again
            scripted = self.c.claimer.scripted()
            outcomes, bodies = queue.ack_batch_and_claim(items, claim, scripted_claim=scripted)
            self.c.claimer.memory_seen(queue.claim_refused_oom)
            if not bodies:
                self.c.claimer.turns.found_empty(queue)
            if queue.claim_lost:
                self.c.claim_reply_lost()
            return outcomes, bodies

        settled = self.c.settle(ack, "task.ack_uncertain", done)
        if settled is None:
            return []
        outcomes, bodies = settled
        m = self.c.metrics[queue.keys.queue]
        m.last_success.set_to_current_time()
        for task, (acked, previous_failures) in zip(done, outcomes, strict=True):
            fields = _fields(task, attempt=previous_failures + 1)
            if acked:
                m.acked.inc()
                self.c.log.info("task.done", **fields)
            else:
                m.done_but_recovered.inc()  # the ack removed nothing: a peer recovered it
                self.c.log.warning("task.done_but_recovered", note=_RECOVERED_NOTE, **fields)
        return [(queue, body) for body in bodies]

    def _failed(self, task: Task) -> None:
        queue, body = task.queue, task.body
        m = self.c.metrics[task.queue_name]
        m.failed.inc()
        s = self.c.settings
        entry = dead_letter_entry(body, task.error or "", 0, self.c.worker, time.time())
        settled = self.c.settle(
            lambda: queue.fail(body, entry, s.max_attempts, s.retry_base, s.retry_cap),
            "task.fail_uncertain",
            [task],
        )
        if settled is None:
            return
        verdict, attempts, delay = settled
        fields = _fields(task, attempt=attempts, error=task.error)
        if verdict == "dead":
            m.dead_lettered.inc()
            self.c.log.error("task.dead_lettered", traceback=task.trace, **fields)
        elif verdict == "retry":
            m.retried.inc()
            self.c.log.warning(
                "task.failed", retry_in=round(delay, 3), traceback=task.trace, **fields
            )
        else:
            self.c.log.warning("task.failed_but_recovered", note=_RECOVERED_NOTE, **fields)


def _fields(task: Task, **more: Any) -> dict[str, Any]:
    """The fields of a task's outcome line: its queue and id, as in the handler's own lines."""
    return {"queue": task.queue_name, "task": task.id, **more, "duration": round(task.duration, 6)}
