"""Handlers for tests/test_producer_*.py: each run appends "<time.time()> <body>" to
$TEST_HANDLER_RECORD.times, so a test can tell when a delayed task ran."""

from __future__ import annotations

import os
import time


def stamp(body: bytes) -> None:
    """Record when the task ran (wall clock of this process)."""
    line = f"{time.time():.6f} {body.decode('utf-8', 'replace')}\n".encode()
    path = os.environ["TEST_HANDLER_RECORD"] + ".times"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
