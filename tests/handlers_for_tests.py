"""The handlers the tests' taskd subprocesses run (``--handler handlers_for_tests:<name>``).

They record to $TEST_HANDLER_RECORD: one "<pid> <phase> <body>" line per event, written with
O_APPEND (lines of concurrent processes never interleave; `read_records` parses them).

`record`'s body grammar: ``name`` succeeds at once; ``slow:<seconds>:name`` sleeps first;
``fail:name`` always raises; ``hang:name`` sleeps forever; ``crash:name`` kills the process.
Each run writes "start" and, on success, "done". The others misbehave as their names say.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

RECORD_ENV = "TEST_HANDLER_RECORD"
_log = structlog.get_logger("test.shout")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


def _write(phase: str, text: str | bytes) -> None:
    """One record line; a bytes body is decoded as the handlers receive it (UTF-8, replaced)."""
    if isinstance(text, bytes):
        text = _text(text)
    _append(os.environ[RECORD_ENV], f"{os.getpid()} {phase} {text}\n")


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def read_records(path: Path) -> list[tuple[str, str, str]]:
    """(pid, phase, body) of every line the handlers wrote to `path` (none yet: [])."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, phase, body = line.split(" ", 2)
        out.append((pid, phase, body))
    return out


# ---------------------------------------------------------------- well-behaved (and faults)
def record(body: bytes) -> None:
    """Record the task, acting out the fault its body asks for."""
    text = _text(body)
    _write("start", text)
    if text.startswith("slow:"):
        time.sleep(float(text.split(":")[1]))
    elif text.startswith("fail:"):
        raise RuntimeError(f"asked to fail: {text}")
    elif text.startswith("hang:"):
        while True:
            time.sleep(3600)
    elif text.startswith("crash:"):
        os._exit(3)
    _write("done", text)


def record_fast(body: bytes) -> None:
    """Only the 'done' line: for many-task tests."""
    _write("done", _text(body))


def slow_fail(body: bytes) -> None:
    """Record, sleep the seconds in ``<seconds>:name``, then fail."""
    _write("start", _text(body))
    time.sleep(float(body.decode().split(":")[0]))
    raise RuntimeError(f"failed after sleeping: {body!r}")


def raise_surrogate(body: bytes) -> None:
    """Fail with an error whose text holds a lone surrogate (a surrogate-escaped file name),
    unless the body is ``ok``."""
    _write("start", _text(body))
    if body != b"ok":
        name = os.fsdecode(b"/nonexistent/\xff-" + body)  # '\udcff' in the text
        raise FileNotFoundError(f"{name}: no such file or directory")
    _write("done", _text(body))


def stamp(body: bytes) -> None:
    """Record when the task ran (wall clock of this process): "<time> <body>" lines in
    $TEST_HANDLER_RECORD.times, so a test can tell when a delayed task ran."""
    _append(os.environ[RECORD_ENV] + ".times", f"{time.time():.6f} {_text(body)}\n")


# ---------------------------------------------------------------- coroutines and non-handlers
async def async_record(body: bytes) -> None:
    """Record the body only after really awaiting: proves the coroutine ran to its end."""
    await asyncio.sleep(0.01)
    _write("loop", str(id(asyncio.get_running_loop())))
    _write("done", _text(body))


async def async_fail(body: bytes) -> None:
    """Fail after awaiting, so the failure comes out of a running coroutine."""
    await asyncio.sleep(0.01)
    _write("start", _text(body))
    raise RuntimeError(f"async handler refused {_text(body)}")


async def async_hang(body: bytes) -> None:
    """Await for ever: only the task timeout ends it."""
    _write("start", _text(body))
    await asyncio.sleep(3600)
    _write("done", _text(body))


def generator(body: bytes) -> Iterator[bytes]:
    """A generator function: calling it runs nothing."""
    yield body


async def async_generator(body: bytes) -> AsyncIterator[bytes]:
    """An async generator function: calling it runs nothing either."""
    yield body


class NotAFunction:
    """A class: calling it makes an instance, it handles nothing."""

    def __init__(self, body: bytes) -> None:
        self.body = body


NOT_CALLABLE = "a string"


# ---------------------------------------------------------------- hostile handlers
class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def misbehave(body: bytes) -> None:
    """Act out what the body names: exit:<code>, interrupt, surrogate, unprintable; else succeed.

    Each run writes "start"; only a success writes "done".
    """
    text = _text(body)
    _write("start", text)
    if text.startswith("exit:"):
        sys.exit(int(text.split(":")[1]))
    if text == "interrupt":
        raise KeyboardInterrupt
    if text == "surrogate":
        name = os.fsdecode(b"report-\xff.csv")  # a file name that is not UTF-8
        raise FileNotFoundError(f"no such input file: {name}")
    if text == "unprintable":
        raise _UnprintableError()
    _write("done", text)


def leave_a_thread(body: bytes) -> None:
    """Start a non-daemon thread that never ends (a library's background worker)."""
    threading.Thread(target=time.sleep, args=(3600,), name="library-worker").start()


async def leave_a_to_thread(body: bytes) -> None:
    """The common `wait_for(to_thread(...))` whose thread outlives its timeout."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.to_thread(time.sleep, 3600), 0.1)


def shout(body: bytes) -> None:
    """Log ``<count>`` lines of 8 KiB (body ``<count>:name``): fills a log pipe nobody reads."""
    count = int(body.decode().split(":")[0])
    for i in range(count):
        _log.info("shout", i=i, text="x" * 8192)
