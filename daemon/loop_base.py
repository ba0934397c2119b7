"""What the consume and subscribe loops share: the stop request, the fault policy, the turns.

A loop is a `RedisLoop` subclass that says what one turn does (`turn`) and what it logs at
start (`started_fields`); the frame around it is written once: "<role>.started", turns until a
stop is requested, the clean end (`end`), the cleanup that always runs (`close`), the drain
timer disarmed (`stop.finished()`), "<role>.stopped". `turn()` runs one turn, so a test can
drive a loop step by step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.backoff import AbstractBackoff

from daemon import exitcodes
from daemon.config import Settings
from daemon.faults import LinkState, RedisFaultPolicy
from daemon.lifecycle import GracefulStop
from daemon.liveness import Progress


class RedisLoop:
    """The frame of a taskd loop process (see the module docstring).

    `role` ("consumer", "subscriber") prefixes the lifecycle events; `lost` says what a forced
    stop loses, in the drain-timeout and forced-exit lines.
    """

    def __init__(
        self,
        settings: Settings,
        log: Any,
        *,
        role: str,
        lost: str,
        backoff: AbstractBackoff | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.clock = clock
        self.progress = progress or Progress(clock)
        self.stop = GracefulStop(role, settings.drain_timeout, log, self.progress, lost)
        self.stop_requested = self.stop.requested
        self.faults = RedisFaultPolicy.for_loop(
            settings, log, self.stop_requested, backoff=backoff, clock=clock, progress=self.progress
        )

    @property
    def link(self) -> LinkState:
        """Whether Redis is reachable (read by /readyz, the metrics and systemd's notes)."""
        return self.faults.link

    def request_stop(self, signum: int = 15, _frame: Any = None) -> None:
        """First signal: stop after the unit of work in hand. Second signal: exit at once."""
        self.stop.request(signum, _frame)

    def run(self) -> int:
        """Turn until stopped; returns the exit code (0 after a clean stop)."""
        role = self.stop.role
        self.log.info(f"{role}.started", **self.started_fields())
        try:
            self.begin()
            while not self.stop_requested.is_set():
                self.turn()
            self.end()
        except Exception as exc:
            self.crashed(exc)
            raise
        finally:
            self.close()
            self.stop.finished()
        self.log.info(f"{role}.stopped", exit_code=exitcodes.OK)
        return exitcodes.OK

    # -- what a loop fills in -------------------------------------------------------------
    def started_fields(self) -> dict[str, Any]:
        """The fields of the "<role>.started" line."""
        raise NotImplementedError

    def turn(self) -> None:
        """One turn of the loop; Redis errors are handled inside (through `self.faults`)."""
        raise NotImplementedError

    def begin(self) -> None:
        """Before the first turn (threads of the loop's own, for instance)."""

    def end(self) -> None:
        """After the last turn of a clean stop: leave nothing behind in Redis."""

    def crashed(self, exc: Exception) -> None:
        """The loop raised `exc` (it propagates): a last line of the loop's own, if any."""

    def close(self) -> None:
        """Always, after the loop ended however it did: release connections and threads."""
