"""Handlers for tests/test_hostile_watch_*.py taskd subprocesses."""

from __future__ import annotations

import structlog

_log = structlog.get_logger("test.shout")


def shout(body: bytes) -> None:
    """Log ``<count>`` lines of 8 KiB (body ``<count>:name``): fills a log pipe nobody reads."""
    count = int(body.decode().split(":")[0])
    for i in range(count):
        _log.info("shout", i=i, text="x" * 8192)
