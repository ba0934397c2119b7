"""Handler slots: where claimed tasks run, one at a time or up to --concurrency at once.

The consume loop starts a task in a free slot and later collects it finished, its outcome
(error text, traceback, duration) carried by the task. Three kinds of slots:
`InlineSlot` runs the handler on the loop's own thread (--concurrency 1: taskd as it always
was), `ThreadSlots` run a plain handler on N threads, `AsyncSlots` run an `async def` handler
as up to N coroutines on one event loop thread owned by the consumer.

Each run reports its start and end to the progress clock (the task timeout, timed from the
task's own start; the heartbeat keeper) and to taskd_tasks_in_progress from the thread that
runs it, so a finished task stops counting at once, even while the loop is busy settling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from daemon import handlers, metrics
from daemon.dead_letters import safe_text
from daemon.heartbeat_keeper import describe_error
from daemon.liveness import GuardedThread, Progress
from daemon.reliable import ReliableQueue

MAX_TRACEBACK = 4000  # characters of a handler's traceback kept in its failure log line


@dataclass(eq=False)  # identity, not value: two tasks may carry the same body
class Task:
    """A claimed task, from its claim until it is settled (acked, failed or given back)."""

    queue: ReliableQueue
    body: bytes
    digest: str
    error: str | None = None  # None: the handler returned (success)
    trace: str = ""
    duration: float = 0.0
    finished_at: float = 0.0  # on the loop's clock

    @property
    def id(self) -> str:
        """The short id in log lines: the first 12 hex digits of the body's SHA-1."""
        return self.digest[:12]

    @property
    def queue_name(self) -> str:
        """The name of the queue the task came from."""
        return self.queue.keys.queue


class Runs:
    """The bookkeeping around each handler run: progress clock, metrics, log context."""

    def __init__(
        self, progress: Progress, queue_metrics: dict[str, metrics.QueueMetrics], clock: Any
    ) -> None:
        self.progress = progress
        self.metrics = queue_metrics
        self.clock: Callable[[], float] = clock

    def begin(self, task: Task) -> tuple[int, float]:
        """The task starts: its clock runs from now; returns (progress key, start time)."""
        structlog.contextvars.bind_contextvars(queue=task.queue_name, task=task.id)
        key = self.progress.task_started(f"{task.queue_name}:{task.id}")
        self.metrics[task.queue_name].in_progress.inc()
        return key, time.perf_counter()

    def failed(self, task: Task, exc: Exception) -> None:
        """The handler raised `exc`: keep its text and traceback for the failure line."""
        task.error = describe_error(exc)
        task.trace = safe_text(traceback.format_exc()[-MAX_TRACEBACK:])

    def end(self, task: Task, key: int, started: float) -> None:
        """The handler is done, however it ended."""
        task.duration = time.perf_counter() - started
        # The handler is done: from here the task timeout no longer applies, so a long
        # Redis outage while settling is waited out (progress is marked per retry).
        self.progress.task_finished(key)
        m = self.metrics[task.queue_name]
        m.in_progress.dec()
        m.duration.observe(task.duration)
        task.finished_at = self.clock()
        structlog.contextvars.unbind_contextvars("queue", "task")

    def run(self, handler: Callable[[bytes], object], task: Task) -> None:
        """Run a plain handler on this thread."""
        key, started = self.begin(task)
        try:
            handler(task.body)
        except Exception as exc:
            self.failed(task, exc)
        finally:
            self.end(task, key, started)

    async def run_async(self, handler: handlers.AsyncHandler, task: Task) -> None:
        """Run a coroutine handler on the current event loop (its own context: its own log
        bindings)."""
        key, started = self.begin(task)
        try:
            await handler(task.body)
        except Exception as exc:
            self.failed(task, exc)
        finally:
            self.end(task, key, started)


class Slots(Protocol):
    """Where tasks run: `start` one in a free slot, `collect` the finished ones."""

    capacity: int
    running: int  # started and not yet collected

    def start(self, task: Task) -> None: ...

    def collect(self, timeout: float) -> list[Task]: ...

    def close(self) -> None: ...


class InlineSlot:
    """One slot on the loop's own thread: `start` returns when the handler has."""

    capacity = 1

    def __init__(self, handler: Callable[[bytes], object], runs: Runs) -> None:
        self.handler = handler
        self.runs = runs
        self.running = 0
        self._done: list[Task] = []

    def start(self, task: Task) -> None:
        self.running += 1
        self.runs.run(self.handler, task)
        self._done.append(task)

    def collect(self, timeout: float) -> list[Task]:
        done, self._done = self._done, []
        self.running -= len(done)
        return done

    def close(self) -> None:
        """Nothing to stop."""


class _Finished:
    """Finished tasks handed from the slots' threads to the loop."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Task] = queue.SimpleQueue()

    def take(self, timeout: float) -> list[Task]:
        """Every finished task; waits up to `timeout` seconds for the first one."""
        try:
            first = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return []
        done = [first]
        while True:
            try:
                done.append(self.queue.get_nowait())
            except queue.Empty:
                return done


class ThreadSlots:
    """N handler threads for a plain handler (daemon threads: a kill or exit never waits)."""

    def __init__(
        self, capacity: int, handler: Callable[[bytes], object], runs: Runs, log: Any
    ) -> None:
        self.capacity = capacity
        self.handler = handler
        self.runs = runs
        self.running = 0
        self._work: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._finished = _Finished()
        for n in range(capacity):
            GuardedThread(f"handler-{n}", runs.progress, log, target=self._serve).start()

    def _serve(self) -> None:
        while (task := self._work.get()) is not None:
            self.runs.run(self.handler, task)
            self._finished.queue.put(task)

    def start(self, task: Task) -> None:
        self.running += 1
        self._work.put(task)

    def collect(self, timeout: float) -> list[Task]:
        done = self._finished.take(timeout)
        self.running -= len(done)
        return done

    def close(self) -> None:
        """Idle threads end; a thread still in a handler ends with the process."""
        for _ in range(self.capacity):
            self._work.put(None)


class AsyncSlots:
    """Up to N coroutines of an `async def` handler on one event loop, in its own thread."""

    def __init__(self, capacity: int, handler: handlers.AsyncHandler, runs: Runs, log: Any):
        self.capacity = capacity
        self.handler = handler
        self.runs = runs
        self.running = 0
        self._finished = _Finished()
        # asyncio keeps only weak references to tasks: a coroutine that waits on nothing else
        # would be collected mid-run (its slot never freed, its stack gone from a stall dump)
        self._running: set[concurrent.futures.Future[None]] = set()
        self.loop = handlers.handler_event_loop()
        GuardedThread("handler-loop", runs.progress, log, target=self.loop.run_forever).start()

    async def _run(self, task: Task) -> None:
        try:
            await self.runs.run_async(self.handler, task)
        finally:
            self._finished.queue.put(task)

    def start(self, task: Task) -> None:
        self.running += 1
        future = asyncio.run_coroutine_threadsafe(self._run(task), self.loop)
        self._running.add(future)
        future.add_done_callback(self._running.discard)

    def collect(self, timeout: float) -> list[Task]:
        done = self._finished.take(timeout)
        self.running -= len(done)
        return done

    def close(self) -> None:
        """Stop the event loop once idle; coroutines still running end with the process."""
        if self.running == 0:
            self.loop.call_soon_threadsafe(self.loop.stop)


def make_slots(concurrency: int, handler: Callable[[bytes], object], runs: Runs, log: Any) -> Slots:
    """The slots for --concurrency: inline for 1, else threads or one event loop."""
    if concurrency <= 1:
        return InlineSlot(handler, runs)
    coroutine = handlers.coroutine_function(handler)
    if coroutine is not None:
        return AsyncSlots(concurrency, coroutine, runs, log)
    return ThreadSlots(concurrency, handler, runs, log)
