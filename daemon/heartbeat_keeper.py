"""The thread that keeps a worker's heartbeat alive while a long handler runs.

It has its own connection, so a handler that runs for minutes does not make its worker look
dead. It must not die silently: a death is logged with its traceback, counted, and reported
to the progress object, which makes /healthz fail.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from typing import Any

import redis

from daemon import metrics
from daemon.dead_letters import safe_text
from daemon.liveness import Progress
from daemon.reliable import ReliableQueue, WorkerIdLost


def describe_error(exc: BaseException) -> str:
    """An error as safe text: its __str__ may raise or carry lone surrogates."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - a broken __str__ must not crash the loop
        text = f"{type(exc).__name__}: <str() of the exception failed>"
    return safe_text(text)


class HeartbeatKeeper(threading.Thread):
    """Beats every ttl/3 while any task runs; finding the id taken over, leaves it in `lost`.

    "Any task runs" is read from the progress clock (every handler slot reports there);
    `busy` forces beating regardless.
    """

    def __init__(
        self, queues: list[ReliableQueue], ttl: float, log: Any, progress: Progress
    ) -> None:
        super().__init__(name="taskd-heartbeat-keeper", daemon=True)
        self.queues = queues
        self.ttl = ttl
        self.log = log
        self.progress = progress
        self.busy = False  # beat even when no task is reported running
        self.lost: WorkerIdLost | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stop at the next tick (it is a daemon thread: nobody waits for it)."""
        self._stopped.set()

    def run(self) -> None:
        try:
            self._beat_while_busy()
        except WorkerIdLost as exc:
            self.lost = exc
        except BaseException as exc:  # noqa: BLE001 - reported, not swallowed
            error = describe_error(exc)
            self.log.error(
                "thread.died",
                thread=self.name,
                error=error,
                traceback=safe_text(traceback.format_exc()),
                note="the worker's heartbeat is no longer kept during long tasks; /healthz fails",
            )
            metrics.HELPER_THREAD_DEATHS.labels(thread=self.name).inc()
            self.progress.helper_died(self.name, error)

    def _beat_while_busy(self) -> None:
        while not self._stopped.wait(self.ttl / 3):
            if not (self.busy or self.progress.tasks_running()):
                continue
            for queue in self.queues:
                # the main loop reports an outage; a missed beat only risks a duplicate
                with contextlib.suppress(redis.RedisError):
                    queue.heartbeat(self.ttl)
