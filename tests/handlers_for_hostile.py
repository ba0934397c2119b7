"""Handlers that misbehave, for tests/test_hostile_handlers_*.py; they record to a file.

Lines are "<pid> <phase> <body>" in $TEST_HANDLER_RECORD (the format DaemonFactory.records()
reads), written with O_APPEND.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator


def _write(phase: str, text: str) -> None:
    line = f"{os.getpid()} {phase} {text}\n".encode("utf-8", "backslashreplace")
    fd = os.open(os.environ["TEST_HANDLER_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def async_record(body: bytes) -> None:
    """Record the body only after really awaiting: proves the coroutine ran to its end."""
    await asyncio.sleep(0.01)
    _write("loop", str(id(asyncio.get_running_loop())))
    _write("done", body.decode("utf-8", "replace"))


async def async_fail(body: bytes) -> None:
    """Fail after awaiting, so the failure comes out of a running coroutine."""
    await asyncio.sleep(0.01)
    _write("start", body.decode("utf-8", "replace"))
    raise RuntimeError(f"async handler refused {body.decode('utf-8', 'replace')}")


async def async_hang(body: bytes) -> None:
    """Await for ever: only the task timeout ends it."""
    _write("start", body.decode("utf-8", "replace"))
    await asyncio.sleep(3600)
    _write("done", body.decode("utf-8", "replace"))


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


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def misbehave(body: bytes) -> None:
    """Act out what the body names: exit:<code>, interrupt, surrogate, unprintable; else succeed.

    Each run writes "start"; only a success writes "done".
    """
    text = body.decode("utf-8", "replace")
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
