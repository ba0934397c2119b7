"""How a taskd loop process lives and stops: signals, drain timer, watchdog and metrics around it.

Shared by `taskd consume` and `taskd subscribe` (and its --durable form), so both stop the same
way: the first SIGTERM/SIGINT finishes the unit of work in hand within --drain-timeout (else
exit 75), a second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import exitcodes, metrics
from daemon.config import Settings
from daemon.connection import LinkState
from daemon.liveness import (
    LAST_WORDS_DEADLINE,
    Progress,
    StallWatchdog,
    arm_exit,
    bounded_write,
    enable_stack_dumps,
    json_log_line,
    log_fd,
)


def _last_line(level: str, event: str, **fields: Any) -> None:
    """A log line written right before an exit: bounded, never through a lock that may be held."""
    line = json_log_line(level, event, **fields)
    bounded_write(log_fd(), line, time.monotonic() + LAST_WORDS_DEADLINE / 2)


class GracefulStop:
    """The stop request of one loop, with its drain deadline."""

    def __init__(self, role: str, drain_timeout: float, log: Any, progress: Progress, lost: str):
        self.role = role  # "consumer" or "subscriber": the prefix of the log events
        self.drain_timeout = drain_timeout
        self.log = log
        self.progress = progress
        self.lost = lost  # what happens to the work in hand when the stop is forced
        self.requested = threading.Event()
        self._signalled = False
        self._timer: threading.Timer | None = None

    def request(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        """Signal handler. First call: stop and drain. Second call: exit at once."""
        if self._signalled:  # the exit must not wait for a log write (stdout may be blocked)
            _last_line("warning", f"{self.role}.forced_exit", signal=signum, note=self.lost)
            os._exit(128 + signum)
        self._signalled = True
        self.log.info(f"{self.role}.stopping", signal=signum, drain_timeout=self.drain_timeout)
        # Not Event.set() here: the main thread may be inside that Event's lock (in a wait),
        # and this handler runs on the main thread: set it from another thread instead.
        threading.Thread(target=self.requested.set, name="taskd-stop", daemon=True).start()
        self._timer = threading.Timer(self.drain_timeout, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def _expired(self) -> None:
        """Exit 75: armed first, the log line bounded, so a blocked stdout cannot hold it."""
        arm_exit(lambda: os._exit(exitcodes.DRAIN_TIMEOUT), LAST_WORDS_DEADLINE)
        _last_line(
            "error",
            f"{self.role}.drain_timeout",
            drain_timeout=self.drain_timeout,
            note=self.lost,
            **self.progress.snapshot().as_dict(),
        )
        os._exit(exitcodes.DRAIN_TIMEOUT)

    def finished(self) -> None:
        """The loop has stopped by itself: no forced exit any more."""
        if self._timer:
            self._timer.cancel()


def supervise(
    settings: Settings,
    progress: Progress,
    link: LinkState,
    stop: GracefulStop,
    loop: Callable[[], int],
    log: Any,
) -> int:
    """Run `loop` with the metrics server, the stall watchdog and the signal handlers.

    Stack dumps first: from here on SIGABRT (the outside watchdog) dumps every thread's stack
    to stderr and leaves no core file.
    """
    enable_stack_dumps()
    metrics.track_progress(progress)
    if settings.metrics_port:
        from daemon.http import serve_metrics

        serve_metrics(settings, progress, link, log)
    watchdog = StallWatchdog(
        progress,
        settings.stall_timeout,
        settings.task_timeout,
        log,
        heartbeat_file=settings.heartbeat_file,
    )
    watchdog.start()
    signal.signal(signal.SIGTERM, stop.request)
    signal.signal(signal.SIGINT, stop.request)
    try:
        return loop()
    finally:
        watchdog.stop()
