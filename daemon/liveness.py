"""Progress clock and the in-process stall watchdog.

The loop marks progress on every turn, idle turns included; a handler run marks nothing but
is timed by --task-timeout instead. A watchdog thread compares both clocks with their limits
(`stall_reason`, pure) and, when one is passed, logs `watchdog.stall` with the stacks of all
threads and exits the process with code 70: the task stays claimed, so it is recovered and
counted as a failed attempt. The same thread writes a heartbeat file for outside observers
(the supervisord watchdog): a process frozen as a whole stops writing it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon import exitcodes


@dataclass(frozen=True)
class Snapshot:
    """What the loop is doing, as seen at one instant."""

    since_progress: float
    task: str | None
    task_age: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds_since_progress": round(self.since_progress, 3),
            "task": self.task,
            "task_age_seconds": None if self.task_age is None else round(self.task_age, 3),
        }


class Progress:
    """The loop's progress clock; thread-safe reads from the watchdog and /healthz."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        # (description, start) of the running task, replaced as a whole: one attribute
        # store is atomic for readers in other threads, so the hot path takes no lock
        self._task: tuple[str, float] | None = None
        # Work clock (for /healthz): a task claimed or settled, or a claim that found the
        # queue empty. Failed Redis retries turn the loop but do no work: they do not count.
        self._last_work = self._last
        # Helper threads (task heartbeat, HTTP server) that died: name -> error
        self.dead_helpers: dict[str, str] = {}

    def mark(self) -> None:
        """The loop turned: it is not stuck."""
        self._last = self._clock()

    def work_done(self) -> None:
        """Work got done (a claim, an ack, a failure settled) or there was none to do."""
        self._last_work = self._clock()

    def since_work(self) -> float:
        """Seconds since work was last done (or found absent)."""
        return self._clock() - self._last_work

    def helper_died(self, name: str, error: str) -> None:
        """A helper thread ended by an unexpected exception: /healthz fails from now on."""
        self.dead_helpers[name] = error

    def task_started(self, description: str) -> None:
        self._task = (description, self._clock())

    def task_finished(self) -> None:
        self._task = None
        self.mark()

    def snapshot(self) -> Snapshot:
        now = self._clock()
        task, last = self._task, self._last
        if task is None:
            return Snapshot(now - last, None, None)
        return Snapshot(now - last, task[0], now - task[1])


def stall_reason(snap: Snapshot, stall_timeout: float, task_timeout: float) -> str | None:
    """Why the loop counts as stuck, or None. While a task runs only its age counts."""
    if snap.task_age is not None:
        if snap.task_age > task_timeout:
            return f"task ran {snap.task_age:.1f} s, past --task-timeout {task_timeout:g} s"
        return None
    if snap.since_progress > stall_timeout:
        return (
            f"no progress for {snap.since_progress:.1f} s, past --stall-timeout {stall_timeout:g} s"
        )
    return None


def all_stacks() -> str:
    """The Python stacks of every thread, for the stall log line."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(
            f"Thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame))
        )
    return "\n".join(parts)


def write_heartbeat_file(path: str, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def read_heartbeat_file(path: str) -> dict[str, Any] | None:
    """The last heartbeat written to `path`, or None if absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _exit_stalled() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exitcodes.STALLED)


class StallWatchdog(threading.Thread):
    """Daemon thread: fires once when the loop is stuck; writes the heartbeat file."""

    def __init__(
        self,
        progress: Progress,
        stall_timeout: float,
        task_timeout: float,
        log: Any,
        heartbeat_file: str = "",
        interval: float = 1.0,
        on_stall: Callable[[], None] = _exit_stalled,
    ) -> None:
        super().__init__(name="taskd-watchdog", daemon=True)
        self.progress = progress
        self.stall_timeout = stall_timeout
        self.task_timeout = task_timeout
        self.log = log
        self.heartbeat_file = heartbeat_file
        self.interval = interval
        self.on_stall = on_stall
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        if self.heartbeat_file:  # at once: the outside watchdog must never see a gap
            self._write_heartbeat(self.progress.snapshot())
        while not self.stopped.wait(self.interval):
            snap = self.progress.snapshot()
            if self.heartbeat_file:
                self._write_heartbeat(snap)
            reason = stall_reason(snap, self.stall_timeout, self.task_timeout)
            if reason:
                self.log.critical(
                    "watchdog.stall", reason=reason, **snap.as_dict(), stacks=all_stacks()
                )
                faulthandler.dump_traceback(all_threads=True)
                self.on_stall()
                return

    def _write_heartbeat(self, snap: Snapshot) -> None:
        data = {
            "pid": os.getpid(),
            "time": time.time(),
            "stall_timeout": self.stall_timeout,
            "task_timeout": self.task_timeout,
            **snap.as_dict(),
        }
        try:
            write_heartbeat_file(self.heartbeat_file, data)
        except OSError as exc:
            self.log.warning("heartbeat_file.error", path=self.heartbeat_file, error=str(exc))
