"""The frame shared by the consume and subscribe loops, run with a scripted loop (no Redis).

The loops themselves are checked against a real redis-server (test_subscriber,
test_connection_faults); here the frame's promises: the lifecycle lines, the order of the
steps, cleanup and a disarmed drain timer however the loop ends.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_faults import Log  # one recording logger for the loop tests

from daemon.config import Settings
from daemon.loop_base import RedisLoop


class Scripted(RedisLoop):
    """Stops itself after `turns` turns (or raises at the last one), recording each step."""

    def __init__(self, turns: int, fail: Exception | None = None) -> None:
        self.steps: list[str] = []
        self.turns, self.fail = turns, fail
        super().__init__(Settings(), Log(), role="tester", lost="nothing")
        self.stop.finished = lambda: self.steps.append("finished")  # type: ignore[method-assign]

    def started_fields(self) -> dict[str, Any]:
        return {"turns": self.turns}

    def begin(self) -> None:
        self.steps.append("begin")

    def turn(self) -> None:
        self.steps.append("turn")
        if self.steps.count("turn") == self.turns:
            if self.fail is not None:
                raise self.fail
            self.stop_requested.set()

    def end(self) -> None:
        self.steps.append("end")

    def crashed(self, exc: Exception) -> None:
        self.steps.append(f"crashed:{type(exc).__name__}")

    def close(self) -> None:
        self.steps.append("close")


def test_a_clean_stop_runs_every_step_once_in_order_and_exits_0() -> None:
    loop = Scripted(turns=3)
    assert loop.run() == 0
    assert loop.steps == ["begin", "turn", "turn", "turn", "end", "close", "finished"]
    assert loop.log.lines == [
        ("tester.started", {"turns": 3}),
        ("tester.stopped", {"exit_code": 0}),
    ]


def test_a_loop_that_raises_is_closed_and_its_drain_timer_disarmed() -> None:
    loop = Scripted(turns=2, fail=RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        loop.run()
    assert loop.steps == ["begin", "turn", "turn", "crashed:RuntimeError", "close", "finished"]
    assert [event for event, _ in loop.log.lines] == ["tester.started"]


def test_the_loop_shares_its_stop_event_and_clock_with_its_fault_policy() -> None:
    loop = Scripted(turns=1)
    assert loop.faults.stop is loop.stop_requested
    assert loop.link is loop.faults.link and loop.faults.progress is loop.progress
    assert loop.faults.clock is loop.clock
