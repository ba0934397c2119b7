"""A Python-level faketime for tests/test_hostile_watch_clock.py (no libfaketime needed).

On this directory's PYTHONPATH, a supervisord program named in HOSTILE_WATCH_WALL_OFFSET
("consumer_00=-7200,consumer_01=7200") sees time.time() shifted by that many seconds: to the
outside watchdog, whose clock is not shifted, it is as if the wall clock had stepped.
"""

from __future__ import annotations

import os
import time


def _install() -> None:
    name = os.environ.get("SUPERVISOR_PROCESS_NAME", "")
    for item in os.environ.get("HOSTILE_WATCH_WALL_OFFSET", "").split(","):
        program, _, seconds = item.partition("=")
        if name and program.strip() == name:
            offset = float(seconds)
            time.time = lambda real=time.time, offset=offset: real() + offset  # type: ignore[misc]
            return


_install()
