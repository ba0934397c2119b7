"""Task handlers: loading a user's ``module:function`` and the built-in ones.

Handler contract: ``function(body: bytes) -> None``. Returning means success (the task is
acked); raising means failure (retried with backoff, dead-lettered after --max-attempts).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable

import structlog

from daemon.config import ConfigError

Handler = Callable[[bytes], object]

_log = structlog.get_logger("taskd.handler")


def load(path: str) -> Handler:
    """Import `module:function`; the current directory is importable, as users expect.

    Raises ConfigError with one line naming the path and what went wrong.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--handler={path!r}: expected module:function, e.g. daemon.handlers:log")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--handler={path!r}: cannot import module {module_name!r} ({exc}); "
            "expected an importable module:function"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(
            f"--handler={path!r}: importing {module_name!r} failed "
            f"({type(exc).__name__}: {exc}); expected an importable module:function"
        ) from None
    function = getattr(module, attr, None)
    if function is None:
        raise ConfigError(
            f"--handler={path!r}: module {module_name!r} has no attribute {attr!r}; "
            "expected module:function"
        )
    if not callable(function):
        raise ConfigError(f"--handler={path!r}: {attr!r} is not callable; expected a function")
    return function


def _preview(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > limit else "")


def log(body: bytes) -> None:
    """Log the task and succeed: the handler of `make run`, to watch tasks flow."""
    _log.info("task.body", body=_preview(body), size=len(body))


def noop(body: bytes) -> None:
    """Succeed at once (benchmarks)."""


def sleep(body: bytes) -> None:
    """Sleep for the number of seconds in the body (default 1), then succeed."""
    try:
        seconds = float(body.decode("ascii").strip() or 1)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            f"sleep handler expects a number of seconds, got {_preview(body)!r}"
        ) from None
    time.sleep(max(0.0, seconds))


def fail(body: bytes) -> None:
    """Always fail (to exercise retries and dead letters)."""
    raise RuntimeError(f"fail handler refused task {_preview(body, 60)!r}")
