"""A drained consumer exits, even when a handler left threads behind (no hang after stopping)."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import DaemonFactory, RedisServer, wait_until
from daemon.lifecycle import EXIT_GRACE


@pytest.mark.parametrize("handler", ["leave_a_thread", "leave_a_to_thread"])
def test_consumer_exits_after_sigterm_although_a_handler_left_a_thread_running(
    redis_server: RedisServer, taskd: DaemonFactory, handler: str
) -> None:
    redis_server.client().lpush("jobs", "x")
    daemon = taskd.consume(
        redis_server.url, "--queue", "jobs", "--handler", f"handlers_for_tests:{handler}"
    )
    daemon.wait_for_event("task.done", 15)
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_event("consumer.stopped", 10)
    stopped = time.monotonic()
    assert daemon.wait(EXIT_GRACE + 10) == 0  # the code of a clean stop, not a kill
    assert time.monotonic() - stopped < EXIT_GRACE + 5
    wait_until(lambda: "forced" in daemon.log_path.read_text(), 5, "the forced-exit note")
