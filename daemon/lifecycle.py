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
from typing import Any, Protocol

from daemon import exitcodes, metrics
from daemon.config import ConfigError, Settings
from daemon.faults import LinkState
from daemon.last_words import LAST_WORDS_DEADLINE, arm_exit, bounded_write, json_log_line, log_fd
from daemon.liveness import Progress, StallDetector, enable_stack_dumps
from daemon.redis_url import redact
from daemon.sd_notify import Notifier, utc_clock_time


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
        # Called once, from the signal handler, when the drain begins (systemd's STOPPING=1):
        # each must be quick and must not raise.
        self.listeners: list[Callable[[], object]] = []

    def request(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        """Signal handler. First call: stop and drain. Second call: exit at once."""
        if self._signalled:  # the exit must not wait for a log write (stdout may be blocked)
            _last_line("warning", f"{self.role}.forced_exit", signal=signum, note=self.lost)
            os._exit(128 + signum)
        self._signalled = True
        for listener in self.listeners:
            listener()
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


def _served(settings: Settings) -> str:
    """What the loop works on, for systemd's STATUS lines."""
    if settings.queues:
        shards = f" ({settings.shards} shards each)" if settings.shards > 1 else ""
        return "queue " + ", ".join(settings.queues) + shards
    names = [*settings.channels, *settings.patterns]
    return "channel " + ", ".join(names) if names else "nothing"


class ServiceNotes:
    """What systemd hears from a loop process: READY=1 at the first contact with Redis, a
    STATUS line on each change of the link, STOPPING=1 when the drain begins.

    Ready means Redis answered the loop's start (the consumer's server check and worker-id
    claim): a unit whose Redis is down stays "activating" and says why, as /readyz does.
    """

    def __init__(self, notifier: Notifier, role: str, served: str, drain_timeout: float):
        self.notifier = notifier
        self.role = role
        self.served = served
        self.drain_timeout = drain_timeout
        self.ready = False

    def starting(self, redis: str) -> None:
        """Before the first attempt: which Redis the process is waiting for."""
        self.notifier.status(f"{self.role}: connecting to {redis}")

    def link_changed(self, up: bool) -> None:
        """A LinkState listener: runs on the loop's thread, only on a change of state."""
        if up:
            status = f"{self.role}: {self._working()} {self.served}"
            if self.ready:
                self.notifier.status(status)
            else:
                self.ready = True
                self.notifier.ready(status)
        else:
            since = utc_clock_time()
            self.notifier.status(f"{self.role}: Redis unreachable since {since}, retrying")

    def draining(self) -> None:
        """A GracefulStop listener: runs in the signal handler; one non-blocking send."""
        self.notifier.stopping(
            f"{self.role}: draining (up to {self.drain_timeout:g} s), claiming no more"
        )

    def _working(self) -> str:
        return "consuming" if self.served.startswith("queue") else "subscribed to"


WATCHDOG_TICK = 1.0  # seconds between the stall detector's looks, unless systemd needs more


class Supervised(Protocol):
    """A loop process as `supervise` sees it (daemon/loop_base.py's RedisLoop is one)."""

    settings: Settings
    progress: Progress
    stop: GracefulStop
    log: Any

    @property
    def link(self) -> LinkState: ...

    def run(self) -> int: ...


def supervise(loop: Supervised) -> int:
    """Run `loop` with the metrics server, the stall detector and the signal handlers.

    Stack dumps first: from here on SIGABRT (the outside watchdog, or systemd's WatchdogSec)
    dumps every thread's stack to stderr and leaves no core file. Under systemd the process
    reports its state (ServiceNotes) and pings WATCHDOG=1 from the stall detector's healthy
    ticks only, so a stuck or frozen loop goes silent.
    """
    settings, progress, link, stop, log = (
        loop.settings,
        loop.progress,
        loop.link,
        loop.stop,
        loop.log,
    )
    enable_stack_dumps()
    notifier = Notifier.from_environ()  # unset for children: handlers' subprocesses
    notes = ServiceNotes(notifier, stop.role, _served(settings), settings.drain_timeout)
    if notifier.enabled:
        link.listeners.append(notes.link_changed)
        stop.listeners.append(notes.draining)
        notes.starting(redact(settings.redis_url))
    tick = notifier.tick_interval(WATCHDOG_TICK)
    metrics.track_progress(progress)
    if settings.metrics_port:
        from daemon.probes import serve_metrics

        serve_metrics(settings, progress, link, log)
    watchdog = StallDetector(
        progress,
        settings.stall_timeout,
        settings.task_timeout,
        log,
        heartbeat_file=settings.heartbeat_file,
        interval=tick,
        pulse=(lambda: notifier.watchdog(tick)) if notifier.ping_interval else None,
    )
    watchdog.start()
    signal.signal(signal.SIGTERM, stop.request)
    signal.signal(signal.SIGINT, stop.request)
    code = 1  # an exception out of the loop is a crash, unless it is a configuration error
    try:
        code = loop.run()
        return code
    except ConfigError:
        code = exitcodes.CONFIG
        raise
    finally:
        watchdog.stop()
        notifier.close()
        bound_the_exit(code)


EXIT_GRACE = 5.0  # seconds the interpreter may take to shut down once the loop has stopped


def bound_the_exit(code: int, grace: float = EXIT_GRACE) -> None:
    """Make sure the process ends with `code` within `grace` seconds from now.

    After the loop, Python still joins non-daemon threads and runs atexit hooks, with no
    deadline: a handler's library thread, a ThreadPoolExecutor job or an asyncio.to_thread
    call left running would keep a drained consumer alive for ever (and supervisord or
    systemd waiting). The exit is armed first; its note is a bounded write, never a block.
    """

    def forced() -> None:
        note = (
            f"taskd: exit {code} forced {grace:g} s after the loop stopped: threads or atexit "
            "hooks (a handler's) kept the process alive\n"
        )
        bounded_write(2, note.encode(), time.monotonic() + 0.5)
        os._exit(code)

    arm_exit(forced, grace)
