"""taskd's own log lines take structlog's fast path; only third-party records use stdlib logging.

The per-task ``task.done`` line used to cost ~80 µs through a stdlib LogRecord, handler and
formatter. These tests pin the route (no LogRecord for taskd's events, a no-op method below the
level) and that both routes still write the documented line: timestamp, level, event first.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from daemon import logs

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class _Counting(logging.Filter):
    """Counts the stdlib records that reach the root handler."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.names.append(record.name)
        return True


@pytest.fixture
def configured() -> Iterator[Any]:
    """configure_logging onto a BytesIO-backed stream; the previous logging restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.raiseExceptions)

    def configure(level: str = "info", fmt: str = "json") -> io.TextIOWrapper:
        stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        logs.configure_logging(level, fmt, stream)
        return stream

    yield configure
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:], level, logging.raiseExceptions = saved
    root.setLevel(level)


def _lines(stream: io.TextIOWrapper) -> list[dict[str, Any]]:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return [json.loads(line) for line in buffer.getvalue().decode("utf-8").splitlines()]


def test_own_events_are_written_without_a_stdlib_record(configured: Any) -> None:
    stream = configured("info")
    counting = _Counting()
    logging.getLogger().handlers[0].addFilter(counting)
    log = structlog.get_logger("taskd.consumer").bind(worker="w1")
    structlog.contextvars.bind_contextvars(queue="jobs", task="abc")
    log.info("task.done", attempt=1, duration=0.25)
    logging.getLogger("redis.connection").warning("library %s", "says")
    assert counting.names == ["redis.connection"]  # taskd's line made no LogRecord
    done, library = _lines(stream)
    assert list(done)[:3] == ["timestamp", "level", "event"]
    assert TIMESTAMP.fullmatch(done["timestamp"]), done
    assert done == {
        "timestamp": done["timestamp"],
        "level": "info",
        "event": "task.done",
        "worker": "w1",
        "attempt": 1,
        "duration": 0.25,
        "queue": "jobs",
        "task": "abc",
        "logger": "taskd.consumer",
    }
    assert list(library)[:3] == ["timestamp", "level", "event"]
    assert library["event"] == "library says" and library["logger"] == "redis.connection"
    assert library["level"] == "warning" and library["queue"] == "jobs"


def test_below_the_level_a_call_is_a_no_op_method(configured: Any) -> None:
    stream = configured("warning")
    log = structlog.get_logger("taskd.consumer").bind(worker="w1")
    assert log.info.__name__ == "_nop" and log.debug.__name__ == "_nop"
    log.info("task.done", attempt=1)
    log.warning("task.done_but_recovered", attempt=2)
    (line,) = _lines(stream)
    assert line["event"] == "task.done_but_recovered" and line["level"] == "warning"


def _count_records() -> _Counting:
    counting = _Counting()
    logging.getLogger().handlers[0].addFilter(counting)
    return counting


def test_a_logger_cached_before_a_reconfiguration_writes_to_the_new_stream(
    configured: Any,
) -> None:
    log = structlog.get_logger("taskd.handler")
    first = configured("info")
    log.info("one")  # cached on first use
    second = configured("info")
    counting = _count_records()
    log.info("two")
    assert counting.names == []  # still the fast path
    assert [line["event"] for line in _lines(first)] == ["one"]
    assert [line["event"] for line in _lines(second)] == ["two"]


def test_urls_are_redacted_and_text_escaped_on_the_fast_path(configured: Any) -> None:
    stream = configured("info")
    counting = _count_records()
    structlog.get_logger("taskd.test").warning(
        "redis.retry",
        error="cannot reach redis://user:hunter2@db:6380/0 \udcff",
        raw=b"\xff",
        nested={"k": ["\udcfe"]},
    )
    assert counting.names == []
    (line,) = _lines(stream)
    assert "hunter2" not in line["error"] and "\\udcff" in line["error"]
    assert line["raw"] == "\\xff" and line["nested"] == {"k": ["\\udcfe"]}


def test_a_closed_stream_drops_lines_without_raising(configured: Any) -> None:
    stream = configured("info")
    counting = _count_records()
    log = structlog.get_logger("taskd.test")
    stream.close()
    log.info("task.done", attempt=1)  # no ValueError from the closed file: the sink drops it
    logging.getLogger("redis").warning("also dropped")
    assert counting.names == ["redis"]
