"""The outside watchdog judges heartbeats on its monotonic clock, never by wall-clock times.

A forward clock step larger than the stall timeout must not restart healthy processes; a
backward one must not hide frozen ones. Unit tests drive `observe`/`decide` with an injected
clock; the stack test runs real consumers whose wall clock is hours off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ROOT, TESTS, Stack, wait_until
from daemon.watchdog import Seen, decide, observe

HOURS = 7200.0
PID = 42
INFO = {"statename": "RUNNING", "pid": PID, "start": 1000.0, "name": "consumer_00"}


def ticks(
    files: Iterator[dict[str, Any] | None], start: float = 500.0, every: float = 5.0
) -> list[tuple[float, bool]]:
    """(monotonic time, restart?) for each TICK_5 the listener sees, one heartbeat per tick."""
    seen: Seen | None = None
    out = []
    for i, heartbeat in enumerate(files):
        now = start + i * every
        seen = observe(seen, INFO, heartbeat, now)
        out.append((now, decide(INFO, heartbeat, now, grace=5, seen=seen).restart))
    return out


def beating(wall_offset: float, count: int) -> Iterator[dict[str, Any]]:
    """A live process: its seq advances every tick, its wall time is `wall_offset` off."""
    for seq in range(count):
        yield {"pid": PID, "seq": seq, "time": 2000.0 + seq * 5 + wall_offset, "stall_timeout": 4}


def frozen(wall_offset: float, count: int) -> Iterator[dict[str, Any]]:
    """A stopped process: the same file every tick."""
    for _ in range(count):
        yield {"pid": PID, "seq": 9, "time": 2000.0 + wall_offset, "stall_timeout": 4}


@pytest.mark.parametrize("offset", [-HOURS, HOURS, 0.0], ids=["past", "future", "true"])
def test_a_beating_process_is_never_restarted_whatever_its_wall_clock(offset: float) -> None:
    assert not any(restart for _, restart in ticks(beating(offset, 50)))


def test_a_wall_clock_step_in_the_middle_of_a_run_changes_nothing() -> None:
    def stepped() -> Iterator[dict[str, Any]]:
        for seq, hb in enumerate(beating(0.0, 40)):
            yield {**hb, "time": hb["time"] + (HOURS if seq >= 20 else 0.0)}

    assert not any(restart for _, restart in ticks(stepped()))


@pytest.mark.parametrize("offset", [-HOURS, HOURS, 0.0], ids=["past", "future", "true"])
def test_a_frozen_process_is_restarted_once_unchanged_past_stall_plus_grace(offset: float) -> None:
    result = ticks(frozen(offset, 6))
    # first seen at 500; limit 4 + 5 = 9 s: fresh at 500, 505; stale from 510 on
    assert [restart for _, restart in result] == [False, False, True, True, True, True]


def test_a_process_that_freezes_after_beating_is_judged_from_its_last_change() -> None:
    files = list(beating(HOURS, 4)) + [next(frozen(HOURS, 1))] * 4  # last change at tick 4
    verdicts = ticks(iter(files))
    # the last change is at 520 (seq 9): fresh at 525, stale from 530 (past 520 + 4 + 5)
    assert [r for _, r in verdicts] == [False] * 6 + [True] * 2
    seen = None
    for i, hb in enumerate(files):
        seen = observe(seen, INFO, hb, 500.0 + i * 5)
    assert seen is not None and seen.changed_at == 520.0


def test_a_new_pid_starts_a_new_memory() -> None:
    hb = {"pid": PID, "seq": 1, "time": 0.0, "stall_timeout": 4}
    old = Seen(pid=41, pid_since=0.0, content=hb, changed_at=0.0)
    seen = observe(old, INFO, hb, 1000.0)
    assert seen.pid == PID and seen.pid_since == 1000.0 and seen.changed_at == 1000.0
    assert not decide(INFO, hb, 1000.0, grace=5, seen=seen).restart


STALL = 4.0
STACK_ENV = {
    "TASKD_BLOCK_TIMEOUT": "1",
    "TASKD_SOCKET_TIMEOUT": "2",
    "TASKD_STALL_TIMEOUT": str(STALL),
    "TASKD_BACKOFF_CAP": "0.5",
    "TASKD_RETRY_BASE": "0.05",
    "TASKD_RETRY_CAP": "0.2",
    "TASKD_HEARTBEAT_TTL": "3",
    "TASKD_RECOVERY_INTERVAL": "1",
    # consumer_00's wall clock is 2 h behind, consumer_01's 2 h ahead (tests/hostile_watch_clock)
    "PYTHONPATH": os.pathsep.join([str(TESTS / "hostile_watch_clock"), str(TESTS), str(ROOT)]),
    "HOSTILE_WATCH_WALL_OFFSET": f"consumer_00=-{HOURS:g},consumer_01={HOURS:g}",
}


def heartbeat_time(stack: Stack, name: str) -> float:
    path = stack.root / "var" / "run" / f"{name}.json"
    return float(json.loads(path.read_text())["time"])


def test_real_stack_clock_steps_neither_restart_the_healthy_nor_hide_the_frozen() -> None:
    stack = Stack(**STACK_ENV)
    try:
        stack.start()
        wait_until(lambda: stack.state("watchdog") == "RUNNING", 15, "watchdog RUNNING")
        # the condition is real: the files' wall times are hours off the listener's clock
        wait_until(lambda: heartbeat_time(stack, "consumer_00") < time.time() - HOURS + 60, 15)
        wait_until(lambda: heartbeat_time(stack, "consumer_01") > time.time() + HOURS - 60, 15)
        healthy = stack.pid("consumer_00")
        stopped = stack.pid("consumer_01")
        os.kill(stopped, signal.SIGSTOP)  # frozen, its file's time 2 h in the future
        try:
            wait_until(
                lambda: (
                    stack.pid("consumer_01") != stopped and stack.state("consumer_01") == "RUNNING"
                ),
                STALL + 20,
                "the watchdog to restart the frozen consumer",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
        # meanwhile the listener judged consumer_00 (2 h old by the wall clock) on every tick
        assert stack.pid("consumer_00") == healthy
        log = stack.log("watchdog.log")
        restarts = [json.loads(x) for x in log.splitlines() if '"watchdog.restart"' in x]
        assert [r["process"] for r in restarts] == ["consumer:consumer_01"], restarts
        assert restarts[0]["pid"] == stopped and restarts[0]["heartbeat_age"] > STALL
        # the restart's SIGABRT left the frozen process's stacks in its log, and no core file
        wait_until(
            lambda: "Fatal Python error: Aborted" in stack.log("consumer_01.log"), 10, "the dump"
        )
        assert "most recent call first" in stack.log("consumer_01.log")
        assert not list(stack.root.glob("core*"))
    finally:
        stack.stop()
