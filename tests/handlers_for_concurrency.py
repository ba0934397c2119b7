"""Handlers for the --concurrency and --prefetch tests; they record to $TEST_HANDLER_RECORD.

Same body grammar and record lines as handlers_for_tests.record (``slow:<seconds>:name``,
``fail:name``, ``hang:name``); the async one also writes "<pid> loop <thread> <loop id>" for
each task, so a test can tell that every coroutine ran on one event loop.
"""

from __future__ import annotations

import asyncio
import threading

from handlers_for_tests import _write, record

__all__ = ["async_record", "record", "threaded_record"]


def threaded_record(body: bytes) -> None:
    """handlers_for_tests.record, plus the name of the thread that ran it."""
    _write("thread", threading.current_thread().name.encode())
    record(body)


async def async_record(body: bytes) -> None:
    """Record the task as `record` does, waiting with asyncio instead of sleeping."""
    _write("start", body)
    loop = asyncio.get_running_loop()
    _write("loop", f"{threading.current_thread().name} {id(loop)}".encode())
    text = body.decode("utf-8", "replace")
    if text.startswith("slow:"):
        await asyncio.sleep(float(text.split(":")[1]))
    elif text.startswith("fail:"):
        raise RuntimeError(f"asked to fail: {text}")
    elif text.startswith("hang:"):
        await asyncio.Event().wait()
    _write("done", body)
