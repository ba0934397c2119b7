"""The stall decision (daemon.liveness.stall_reason), called directly on snapshots."""

from __future__ import annotations

from daemon.liveness import Snapshot, stall_reason


def test_an_idle_loop_stalls_past_the_stall_timeout_a_running_task_past_the_task_timeout() -> None:
    assert stall_reason(Snapshot(5, None, None), 60, 300) is None
    assert "stall-timeout" in (stall_reason(Snapshot(61, None, None), 60, 300) or "")
    # while a task runs, only the task timeout counts
    assert stall_reason(Snapshot(200, "q:abc", 200), 60, 300) is None
    assert "task-timeout" in (stall_reason(Snapshot(301, "q:abc", 301), 60, 300) or "")
