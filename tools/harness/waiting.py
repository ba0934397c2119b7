"""Waiting on observable state: one poll loop for the tests and the soak.

A wait ends as soon as the state is there (never a fixed sleep); a check that something keeps
holding samples it for the whole span and fails at the first moment it does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError):
    """The state waited for did not come within the deadline (an AssertionError: a test fails)."""


class StoppedHolding(AssertionError):
    """Something that had to keep holding stopped holding."""


def poll_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate` returns something truthy and return it; None after `timeout` s.

    An exception from `predicate` counts as not yet (the state may be unreadable meanwhile).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001, S110 - not there yet
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str = "", interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy and return it; raise WaitTimeout
    (naming `message` and the last error `predicate` raised) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout} s waiting for {message}{detail}")
        time.sleep(interval)


def stays_true(
    predicate: Callable[[], Any], for_seconds: float, message: str = "", interval: float = 0.05
) -> None:
    """Check `predicate` holds for the whole of `for_seconds` (sampled every `interval` s).

    For the promises that are about time passing: "it keeps waiting, it does not exit", "no
    task runs twice". Raises StoppedHolding at the first false sample or exception.
    """
    started = time.monotonic()
    deadline = started + for_seconds
    while True:
        try:
            ok = predicate()
        except Exception as exc:  # noqa: BLE001 - an error is a failure to hold
            raise StoppedHolding(
                f"{message} stopped holding after {time.monotonic() - started:.2f} s: {exc!r}"
            ) from exc
        if not ok:
            raise StoppedHolding(
                f"{message} stopped holding after {time.monotonic() - started:.2f} s"
            )
        now = time.monotonic()
        if now >= deadline:
            return
        time.sleep(min(interval, deadline - now))
