"""Handlers that leave something running after they return, as libraries do."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


def leave_a_thread(body: bytes) -> None:
    """Start a non-daemon thread that never ends (a library's background worker)."""
    threading.Thread(target=time.sleep, args=(3600,), name="library-worker").start()


async def leave_a_to_thread(body: bytes) -> None:
    """The common `wait_for(to_thread(...))` whose thread outlives its timeout."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.to_thread(time.sleep, 3600), 0.1)
