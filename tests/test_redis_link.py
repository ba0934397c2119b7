"""The Redis link, called directly: its state changes and which errors are worth a retry."""

from __future__ import annotations

from typing import Any

from daemon.faults import LinkState
from daemon.redis_errors import is_transient


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


def test_outages_and_busy_servers_are_retried_but_auth_and_unknown_commands_are_fatal() -> None:
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
