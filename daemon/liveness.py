"""Progress clock, the stall detector, and guarded helper threads.

The loop marks progress on every turn, idle turns included; a handler run marks nothing but
is timed by --task-timeout instead. A watchdog thread compares both clocks with their limits
(`stall_reason`, pure) and, when one is passed, arms the exit, writes `watchdog.stall` with
the stacks of all threads (bounded, non-blocking writes: a blocked stdout cannot hold the exit
back) and exits the process with code 70: the task stays claimed, so it is recovered and
counted as a failed attempt. The same thread writes a progress file with a sequence number
for outside observers (the supervisord watchdog): a process frozen as a whole stops changing it,
and calls its `pulse` (systemd's WATCHDOG=1, daemon/sd_notify.py) on the same healthy ticks.

Helper threads run their body under `run_guarded` (or as a `GuardedThread`): a death is
counted, reported to `Progress.helper_died` (so /healthz fails) and logged as `thread.died`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import json
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon import exitcodes, metrics
from daemon.last_words import (
    LAST_WORDS_DEADLINE,
    arm_exit,
    bounded_write,
    json_log_line,
    last_words,
    log_fd,
)


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
    """The loop's progress clock; thread-safe reads from the watchdog and /healthz.

    Several tasks may run at once (--concurrency): each is timed from its own start and the
    snapshot shows the oldest, so the task timeout covers every one of them.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        # key -> (description, start) of each running task (several with --concurrency),
        # replaced as a whole: one attribute store is atomic for readers in other threads,
        # so readers take no lock; writers (the handler threads) take `_write`.
        self._tasks: dict[int, tuple[str, float]] = {}
        self._write = threading.Lock()
        self._keys = itertools.count(1)
        # Work clock (for /healthz): a task claimed or settled, or a claim that found the
        # queue empty. Failed Redis retries turn the loop but do no work: they do not count.
        self._last_work = self._last
        # Helper threads (heartbeat keeper, probe server) that died: name -> error
        self.dead_helpers: dict[str, str] = {}
        # Why the loop is not consuming although nothing is wrong with it (e.g. waiting for
        # its worker id, held by a live process elsewhere); "" = consuming. For /readyz.
        self.waiting = ""

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

    def task_started(self, description: str) -> int:
        """A task started now; returns its key for `task_finished` (its timeout runs from now)."""
        key = next(self._keys)
        with self._write:
            self._tasks = {**self._tasks, key: (description, self._clock())}
        return key

    def task_finished(self, key: int | None = None) -> None:
        """The task of `key` (None: every task) is done; the loop is not stuck."""
        with self._write:
            if key is None:
                self._tasks = {}
            else:
                tasks = dict(self._tasks)
                tasks.pop(key, None)
                self._tasks = tasks
        self.mark()

    def tasks_running(self) -> int:
        """How many tasks are being handled now."""
        return len(self._tasks)

    def snapshot(self) -> Snapshot:
        """The loop's state; with several tasks running, the oldest one (the first to time out)."""
        now = self._clock()
        tasks, last = self._tasks, self._last
        if not tasks:
            return Snapshot(now - last, None, None)
        oldest = min(tasks.values(), key=lambda task: task[1])
        return Snapshot(now - last, oldest[0], now - oldest[1])


def stall_reason(snap: Snapshot, stall_timeout: float, task_timeout: float) -> str | None:
    """Why the loop counts as stuck, or None. While tasks run only the oldest one's age counts."""
    if snap.task_age is not None:
        if snap.task_age > task_timeout:
            return f"task ran {snap.task_age:.1f} s, past --task-timeout {task_timeout:g} s"
        return None
    if snap.since_progress > stall_timeout:
        return (
            f"no progress for {snap.since_progress:.1f} s, past --stall-timeout {stall_timeout:g} s"
        )
    return None


def run_guarded(
    name: str, target: Callable[[], object], progress: Progress | None, log: Any
) -> None:
    """Run `target` (a helper thread's body) so that its death is noticed, never silent.

    Any BaseException, SystemExit and KeyboardInterrupt included (a thread swallows those
    without a word), is recorded first, where no write can block it: counted in
    taskd_helper_thread_deaths_total{thread=name} and reported to `progress.helper_died`
    (/healthz fails from then on). Then `thread.died` is logged with the traceback, and the
    thread ends. A normal return is not a death.
    """
    try:
        target()
    except BaseException as exc:  # noqa: BLE001 - the point is to catch everything
        error = f"{type(exc).__name__}: {exc}"
        metrics.HELPER_THREAD_DEATHS.labels(thread=name).inc()
        if progress is not None:
            progress.helper_died(name, error)
        with contextlib.suppress(BaseException):  # a broken log must not hide the death
            log.critical("thread.died", thread=name, error=error, traceback=traceback.format_exc())


class GuardedThread(threading.Thread):
    """A daemon helper thread run under `run_guarded`: put its work in `body()` (or pass target).

    The thread is named ``taskd-<name>``; `name` is the metric label and the key in
    `Progress.dead_helpers`.
    """

    def __init__(
        self,
        name: str,
        progress: Progress | None,
        log: Any,
        target: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name=f"taskd-{name}", daemon=True)
        self.helper = name
        self.progress = progress
        self.log = log
        self._body_target = target

    def run(self) -> None:
        run_guarded(self.helper, self.body, self.progress, self.log)

    def body(self) -> None:
        """The thread's work; the default runs the `target` given to the constructor."""
        if self._body_target is not None:
            self._body_target()


def all_stacks() -> str:
    """The Python stacks of every thread, for the stall log line."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(
            f"Thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame))
        )
    from daemon.handlers import coroutine_stacks  # lazy: liveness stays import-light

    coroutines = coroutine_stacks()
    if coroutines:  # where an async handler waits: the thread stack only shows the loop
        parts.append("Coroutines of async handlers:\n" + coroutines)
    return "\n".join(parts)


def write_progress_file(path: str, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def read_progress_file(path: str) -> dict[str, Any] | None:
    """The last heartbeat written to `path`, or None if absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _exit_stalled() -> None:
    """Exit 70 at once: no flush, since a flush to a blocked stdout would never return."""
    os._exit(exitcodes.STALLED)


def enable_stack_dumps() -> None:
    """Make SIGABRT (the outside watchdog), SIGSEGV and friends dump every thread's stack.

    faulthandler writes the Python stacks of all threads to stderr, then the signal's default
    action ends the process. RLIMIT_CORE is set to 0 first: a core file of a task consumer holds
    task bodies and secrets and can fill the disk; the stack dump is the post-mortem instead.
    Call it early in every long-running process (consume, subscribe, watchdog, web).
    """
    with contextlib.suppress(ValueError, OSError):  # soft limit only: `prlimit` can opt back in
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr closed or not a file
        faulthandler.enable(file=sys.stderr, all_threads=True)


class _OneShot:
    """Calls `action` once, from whichever thread gets there first."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._action = action
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._action()


class StallDetector(GuardedThread):
    """Helper thread: fires once when the loop is stuck; writes the progress file.

    It never calls the logger: a logging call blocks when stdout does (a log pipe nobody
    reads, a full disk), and the watchdog must exit 70 regardless. Its lines are written with
    `bounded_write`, after the exit is armed. It runs guarded: if it dies, `thread.died` is
    logged, `/healthz` fails (Progress.dead_helpers) and the progress file stops changing, so
    the outside watchdog restarts the process; the running task is not cut short by the bug.
    """

    def __init__(
        self,
        progress: Progress,
        stall_timeout: float,
        task_timeout: float,
        log: Any,
        heartbeat_file: str = "",
        interval: float = 1.0,
        on_stall: Callable[[], None] = _exit_stalled,
        last_words_deadline: float = LAST_WORDS_DEADLINE,
        pulse: Callable[[], object] | None = None,
    ) -> None:
        super().__init__("stall_detector", progress, log)
        self.stall_timeout = stall_timeout
        self.task_timeout = task_timeout
        self.heartbeat_file = heartbeat_file
        self.interval = interval
        self.on_stall = _OneShot(on_stall)
        self.last_words_deadline = last_words_deadline
        self.stopped = threading.Event()
        self.seq = 0  # progress file counter: the outside watchdog judges change, not time
        self._heartbeat_error = ""  # the error being reported, so it is logged once
        self.exit_thread: threading.Thread | None = None  # the armed exit, once fired
        # Called on every tick that finds the loop progressing (systemd's WATCHDOG=1): proof
        # of progress, not of a live thread; it must not block.
        self.pulse = pulse

    def stop(self) -> None:
        self.stopped.set()

    def body(self) -> None:
        assert self.progress is not None
        if self.heartbeat_file:  # at once: the outside watchdog must never see a gap
            self._write_heartbeat(self.progress.snapshot())
        while not self.stopped.wait(self.interval):
            snap = self.progress.snapshot()
            reason = stall_reason(snap, self.stall_timeout, self.task_timeout)
            if reason:
                self.fire(reason, snap)
                return
            if self.pulse is not None:
                self.pulse()
            if self.heartbeat_file:
                self._write_heartbeat(snap)

    def fire(self, reason: str, snap: Snapshot) -> None:
        """Exit 70: armed first, then the last words within the deadline, then the exit."""
        self.exit_thread = arm_exit(self.on_stall, self.last_words_deadline)
        deadline = time.monotonic() + self.last_words_deadline * 0.9
        with contextlib.suppress(Exception):  # nothing here may stand between us and the exit
            last_words(
                "watchdog.stall", {"reason": reason, **snap.as_dict()}, all_stacks(), deadline
            )
        self.on_stall()

    def _write_heartbeat(self, snap: Snapshot) -> None:
        self.seq += 1
        data = {
            "pid": os.getpid(),
            "seq": self.seq,
            "time": time.time(),  # for people; the outside watchdog does not trust it
            "stall_timeout": self.stall_timeout,
            "task_timeout": self.task_timeout,
            **snap.as_dict(),
        }
        try:
            write_progress_file(self.heartbeat_file, data)
        except OSError as exc:
            self._note_heartbeat_error(str(exc))
        else:
            self._note_heartbeat_error("")

    def _note_heartbeat_error(self, error: str) -> None:
        """Log a heartbeat-file error once (and its end), bounded: a full disk must not block."""
        if error == self._heartbeat_error:
            return
        self._heartbeat_error = error
        fields = {"path": self.heartbeat_file}
        line = (
            json_log_line("warning", "heartbeat_file.error", **fields, error=error)
            if error
            else json_log_line("info", "heartbeat_file.ok", **fields)
        )
        bounded_write(log_fd(), line, time.monotonic() + 0.5)
