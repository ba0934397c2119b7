"""Pure pieces, called directly: backoff policies, stall decisions, dead-letter format."""

from __future__ import annotations

import base64
import json
from typing import Any

from daemon.connection import LinkState, is_transient
from daemon.liveness import Snapshot, stall_reason
from daemon.reliable import dead_letter_body, dead_letter_entry, parse_dead_letter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = info


class FixedBackoff:
    def compute(self, failures: int) -> float:
        return float(failures)


def test_link_state_logs_each_state_change_once_with_outage_length() -> None:
    clock, log = FakeClock(), RecordingLog()
    link = LinkState(FixedBackoff(), log, clock=clock)  # type: ignore[arg-type]
    link.succeeded()
    delays = [link.failed(ConnectionError("boom")) for _ in range(5)]
    assert delays == [1.0, 2.0, 3.0, 4.0, 5.0]  # the policy decides, no sleeping here
    clock.now += 12.5
    assert link.succeeded() is True
    assert link.succeeded() is False
    names = [e for e, _ in log.events]
    assert names == ["redis.connected", "redis.disconnected", "redis.reconnected"]
    assert log.events[-1][1]["outage_seconds"] == 12.5


def test_stall_reason_idle_loop_versus_running_task() -> None:
    assert stall_reason(Snapshot(5, None, None), 60, 300) is None
    assert "stall-timeout" in (stall_reason(Snapshot(61, None, None), 60, 300) or "")
    # while a task runs, only the task timeout counts
    assert stall_reason(Snapshot(200, "q:abc", 200), 60, 300) is None
    assert "task-timeout" in (stall_reason(Snapshot(301, "q:abc", 301), 60, 300) or "")


def test_dead_letter_entry_keeps_utf8_and_base64_for_binary() -> None:
    text = json.loads(dead_letter_entry("héllo".encode(), "E", 5, "w", 1.5))
    assert text["body"] == "héllo" and text["body_encoding"] == "utf-8"
    assert set(text) >= {"body", "error", "attempts", "worker", "failed_at"}
    raw = b"\xff\x00\xfe"
    binary = json.loads(dead_letter_entry(raw, "E", 5, "w", 1.5))
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == raw
    assert dead_letter_body(binary) == raw


def test_damaged_dead_letters_are_shown_not_raised() -> None:
    doc = parse_dead_letter(b"\xff not json")
    assert doc["body"] is None and "unreadable" in doc["error"]
    assert dead_letter_body(doc) is None


def test_transient_versus_fatal_errors() -> None:
    import redis

    assert is_transient(redis.ConnectionError("refused"))
    assert is_transient(redis.TimeoutError("timeout"))
    assert is_transient(redis.exceptions.BusyLoadingError("LOADING"))
    assert is_transient(redis.ReadOnlyError("READONLY"))
    assert is_transient(redis.ResponseError("UNBLOCKED force unblock"))
    assert is_transient(redis.exceptions.OutOfMemoryError("command not allowed when used memory"))
    assert is_transient(redis.ResponseError("BUSY Redis is busy running a script"))
    assert is_transient(redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    assert is_transient(redis.ResponseError("NOREPLICAS Not enough good replicas to write"))
    assert not is_transient(redis.AuthenticationError("WRONGPASS"))
    assert not is_transient(redis.ResponseError("unknown command 'BLMOVE'"))
    assert not is_transient(redis.exceptions.NoPermissionError("NOPERM"))
