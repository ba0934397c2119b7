"""systemd's notify protocol for `taskd web`: gunicorn's arbiter is the loop systemd watches.

gunicorn sends READY=1 by itself but no WATCHDOG=1 and no STOPPING=1. `run` takes the notify
variables first (so gunicorn's workers do not inherit them) and runs an arbiter that reports
READY=1 once it listens, pings WATCHDOG=1 from its own loop while at least one worker has
checked in within gunicorn's worker timeout (gunicorn replaces silent workers itself), and
sends STOPPING=1 when it begins to stop. A frozen arbiter goes silent and systemd restarts it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from daemon.sd_notify import Notifier

ARBITER_TICK = 1.0  # seconds: gunicorn's arbiter wakes at least this often


class NotifyingArbiter(Arbiter):
    """gunicorn's arbiter, telling systemd how it is doing."""

    def __init__(self, app: BaseApplication, notifier: Notifier, bind: str) -> None:
        self.notifier = notifier
        self.bind = bind
        super().__init__(app)

    def start(self) -> None:
        super().start()
        self.notifier.ready(f"web: serving on {self.bind}")

    def murder_workers(self) -> None:
        """Called on every turn of the arbiter's loop: the place to prove the loop turns."""
        super().murder_workers()
        if self.workers_heard():
            self.notifier.watchdog(ARBITER_TICK)

    def workers_heard(self) -> bool:
        """At least one worker checked in within the worker timeout (none yet: starting)."""
        workers: list[Any] = list(self.WORKERS.values())
        if not workers:
            return True
        now = time.monotonic()
        for worker in workers:
            try:
                if not self.timeout or now - worker.tmp.last_update() <= self.timeout:
                    return True
            except (OSError, ValueError):  # a worker exiting right now
                continue
        return False

    def stop(self, graceful: bool = True) -> None:
        self.notifier.stopping("web: stopping, finishing the requests in hand")
        super().stop(graceful)


def run(application: BaseApplication, bind: str) -> None:
    """What `application.run()` does, with the notifying arbiter (exits via SystemExit)."""
    notifier = Notifier.from_environ()  # before the workers fork: they must not inherit it
    try:
        NotifyingArbiter(application, notifier, bind).run()
    except RuntimeError as exc:  # gunicorn's own handling in BaseApplication.run
        print(f"\nError: {exc}\n", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
