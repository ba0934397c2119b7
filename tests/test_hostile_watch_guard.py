"""Helper threads that die are noticed: counted, reported to Progress (/healthz) and logged."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from daemon import metrics
from daemon.liveness import GuardedThread, Progress, Snapshot, StallDetector, run_guarded


class Recorder:
    """A logger that keeps what it is given (the guard's only output besides the metric)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def critical(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    warning = info = error = critical


def deaths(name: str) -> float:
    value = metrics.registry().get_sample_value(
        "taskd_helper_thread_deaths_total", {"thread": name}
    )
    return value or 0.0


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("boom"), SystemExit(3), KeyboardInterrupt(), MemoryError("no room")],
    ids=["error", "sys.exit", "keyboard-interrupt", "memory"],
)
def test_any_base_exception_in_a_guarded_thread_is_counted_reported_and_logged(
    exc: BaseException,
) -> None:
    name = f"helper-{type(exc).__name__}"
    progress, log, before = Progress(), Recorder(), deaths(name)
    thread = threading.Thread(target=run_guarded, args=(name, lambda: _raise(exc), progress, log))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert deaths(name) == before + 1
    assert name in progress.dead_helpers
    assert type(exc).__name__ in progress.dead_helpers[name]
    [(event, fields)] = log.lines
    assert event == "thread.died" and fields["thread"] == name
    assert "Traceback" in fields["traceback"] and "_raise" in fields["traceback"]


def test_a_normal_return_is_not_a_death() -> None:
    progress, log = Progress(), Recorder()
    run_guarded("helper-ok", lambda: None, progress, log)
    assert not progress.dead_helpers and not log.lines


def test_a_broken_logger_does_not_hide_the_death() -> None:
    class Broken:
        def critical(self, *_a: Any, **_k: Any) -> None:
            raise OSError("stdout is gone")

    progress, before = Progress(), deaths("helper-broken-log")
    run_guarded("helper-broken-log", lambda: _raise(ValueError("x")), progress, Broken())
    assert progress.dead_helpers["helper-broken-log"] == "ValueError: x"
    assert deaths("helper-broken-log") == before + 1


def test_a_guarded_thread_reports_its_death_from_a_body_or_a_target() -> None:
    progress, log = Progress(), Recorder()

    class Beat(GuardedThread):
        def body(self) -> None:
            raise ConnectionResetError("peer went away")

    beat = Beat("beat", progress, log)
    by_target = GuardedThread("by-target", progress, log, target=lambda: _raise(TypeError("t")))
    for thread in (beat, by_target):
        assert thread.daemon and thread.name == f"taskd-{thread.helper}"
        thread.start()
        thread.join(10)
    assert set(progress.dead_helpers) == {"beat", "by-target"}


def test_the_stall_watchdog_itself_is_guarded() -> None:
    """A watchdog that dies leaves no stall protection: it must show, not vanish."""

    class Failing(Progress):
        def snapshot(self) -> Snapshot:
            raise RuntimeError("clock broke")

    progress, log, before = Failing(), Recorder(), deaths("stall_detector")
    fired = threading.Event()
    watchdog = StallDetector(progress, 1, 1, log, interval=0.01, on_stall=fired.set)
    watchdog.start()
    watchdog.join(10)
    assert not watchdog.is_alive() and not fired.is_set()
    assert "clock broke" in progress.dead_helpers["stall_detector"]
    assert deaths("stall_detector") == before + 1
    assert log.lines[0][0] == "thread.died"
