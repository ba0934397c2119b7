"""The Redis fault policy, driven by a fake clock and a fake stop event: no Redis, no sleeping.

The loops' behaviour against a real redis-server is checked elsewhere (test_connection_faults,
test_subscriber, test_hostile_conn_*); here the policy's promises one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.backoff import ConstantBackoff

from daemon.faults import Applied, Interrupted, LinkState, RedisFaultPolicy, Unknown
from daemon.redis_errors import SENT, RedisFatalError, classify


class Clock:
    """Time that moves only when someone waits."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeStop:
    """A stop event whose waits advance the fake clock instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self.requested = False

    def is_set(self) -> bool:
        return self.requested

    def wait(self, timeout: float | None = None) -> bool:
        waited = 0.0 if self.requested else (timeout or 0.0)
        self.waits.append(waited)
        self.clock.now += waited
        return self.requested


class Log:
    """Collects (event, fields) of every log call."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    debug = info = warning = error = _record

    def events(self) -> list[str]:
        return [event for event, _ in self.lines if event != "redis.retry"]


def make_policy(backoff: float = 1.0) -> tuple[RedisFaultPolicy, Clock, FakeStop, list[float], Log]:
    clock, log = Clock(), Log()
    stop = FakeStop(clock)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.now += seconds

    link = LinkState(ConstantBackoff(backoff), log, clock=clock)
    return (
        RedisFaultPolicy(link, "redis://:secret@db:6379/0", stop, pause=pause),
        clock,
        stop,
        pauses,
        log,
    )


def failing(times: int, error: Callable[[], Exception], result: str = "ok") -> Callable[[], str]:
    """An operation that raises `error()` `times` times, then returns `result`."""
    calls = [0]

    def operation() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise error()
        return result

    return operation


def sent_timeout() -> Exception:
    exc = redis.TimeoutError("Timeout reading from socket")
    setattr(exc, SENT, True)
    return exc


def test_call_retries_a_transient_error_until_it_succeeds_logging_each_change_once() -> None:
    policy, _, stop, pauses, log = make_policy()
    result = policy.call(failing(3, lambda: redis.ConnectionError("refused")), interruptible=True)
    assert result == "ok"
    assert stop.waits == [1.0, 1.0, 1.0] and pauses == []
    assert log.events() == ["redis.disconnected", "redis.reconnected"]
    assert policy.link.connected and policy.link.reconnects == 1
    reconnected = dict(log.lines)["redis.reconnected"]
    assert reconnected == {"outage_seconds": 3.0, "attempts": 3}


def test_backoff_counts_from_the_start_of_the_attempt_that_hung() -> None:
    policy, clock, stop, _, _ = make_policy(backoff=5.0)

    def hangs_then_fails() -> str:
        clock.now += 2.0  # the attempt waited for its deadline before it failed
        raise redis.TimeoutError("Timeout connecting to server")

    calls = iter([hangs_then_fails, lambda: "ok"])
    assert policy.call(lambda: next(calls)(), interruptible=False) == "ok"
    assert stop.waits == []  # non-interruptible: the stop event was not waited on


def test_a_stop_cuts_an_interruptible_wait_short_and_call_gives_up() -> None:
    policy, _, stop, _, _ = make_policy()
    stop.requested = True
    with pytest.raises(Interrupted):
        policy.call(failing(10, lambda: redis.ConnectionError("refused")), interruptible=True)
    assert stop.waits == [0.0]


def test_a_stop_does_not_cut_a_non_interruptible_call_short() -> None:
    policy, _, stop, pauses, _ = make_policy()
    stop.requested = True
    result = policy.call(failing(2, lambda: redis.ConnectionError("refused")), interruptible=False)
    assert result == "ok" and pauses == [1.0, 1.0] and stop.waits == []


def test_a_fatal_reply_raises_redis_fatal_error_naming_the_redacted_url() -> None:
    policy, _, _, _, _ = make_policy()
    with pytest.raises(RedisFatalError) as info:
        policy.call(failing(1, lambda: redis.AuthenticationError("WRONGPASS")), interruptible=True)
    assert "WRONGPASS" in str(info.value) and "secret" not in str(info.value)


def test_an_error_that_is_not_redis_propagates_as_it_is() -> None:
    policy, _, _, _, _ = make_policy()
    with pytest.raises(KeyError):
        policy.call(failing(1, lambda: KeyError("bug")), interruptible=True)


def test_out_of_memory_is_redis_up_but_full_not_an_outage() -> None:
    policy, _, stop, _, log = make_policy()
    full: list[bool] = []
    policy.on_oom.append(lambda: full.append(True))
    oom = failing(2, lambda: redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    assert policy.call(oom, interruptible=True) == "ok"
    assert full == [True, True] and stop.waits == [policy.oom_poll] * 2
    assert log.events() == ["redis.connected"] and policy.link.reconnects == 0


def test_settle_sends_a_refused_write_again_and_counts_the_refusals() -> None:
    policy, _, _, pauses, _ = make_policy()
    readonly = failing(2, lambda: redis.ReadOnlyError("READONLY You can't write"))
    assert policy.settle(readonly) == Applied("ok", refusals=2)
    assert pauses == [1.0, 1.0]
    assert policy.link.rejecting == ""  # the outage ended with the success


def test_settle_never_resends_a_write_whose_reply_was_lost() -> None:
    policy, _, _, pauses, log = make_policy()
    sent = [0]

    def ack() -> str:
        sent[0] += 1
        raise sent_timeout()

    settled = policy.settle(ack)
    assert isinstance(settled, Unknown) and sent == [1]
    assert isinstance(settled.error, redis.TimeoutError) and settled.refusals == 0
    assert pauses == [1.0]  # the failure is waited out before the caller reconciles
    assert log.events() == ["redis.disconnected"]


def test_hooks_hear_a_lost_connection_and_the_reconnect_but_not_an_error_reply() -> None:
    policy, _, _, _, _ = make_policy()
    heard: list[str] = []
    policy.on_disconnect.append(lambda: heard.append("disconnect"))
    policy.on_reconnect.append(lambda: heard.append("reconnect"))
    policy.call(failing(1, lambda: redis.ConnectionError("reset")), interruptible=False)
    policy.call(failing(1, lambda: redis.ReadOnlyError("READONLY replica")), interruptible=False)
    assert heard == ["disconnect", "reconnect", "reconnect"]


def test_the_first_success_is_a_connect_not_a_reconnect() -> None:
    policy, _, _, _, log = make_policy()
    reconnects: list[bool] = []
    policy.on_reconnect.append(lambda: reconnects.append(True))
    assert policy.call(lambda: "ok", interruptible=True) == "ok"
    assert not policy.succeeded()  # nothing changes on the hot path
    assert reconnects == [] and log.events() == ["redis.connected"]


def test_failed_measures_the_backoff_from_an_earlier_start_when_told() -> None:
    policy, clock, stop, _, _ = make_policy(backoff=4.0)
    policy.attempt()
    clock.now += 1.0
    policy.failed(redis.ConnectionError("silent"), interruptible=True, since=clock.now - 3.0)
    assert stop.waits == [1.0]


def test_classify_tells_unreachable_refused_full_and_fatal_apart() -> None:
    assert classify(redis.ConnectionError("Connection refused")) == "unreachable"
    assert classify(redis.TimeoutError("Timeout reading from socket")) == "unreachable"
    assert classify(redis.exceptions.BusyLoadingError("LOADING")) == "unreachable"
    assert classify(redis.ReadOnlyError("READONLY You can't write")) == "refused"
    assert classify(redis.ResponseError("NOREPLICAS Not enough good replicas")) == "refused"
    assert classify(redis.exceptions.OutOfMemoryError("OOM command not allowed")) == "full"
    assert classify(redis.AuthenticationError("WRONGPASS")) == "fatal"
    assert classify(redis.ConnectionError("certificate verify failed")) == "fatal"
    assert classify(KeyError("a bug")) == "fatal"
