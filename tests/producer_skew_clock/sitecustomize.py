"""A Python-level faketime for tests/test_producer_delay.py (no libfaketime needed).

On this directory's PYTHONPATH, a process sees time.time() shifted by PRODUCER_TEST_WALL_OFFSET
seconds: a producer whose wall clock is that far off Redis's.
"""

from __future__ import annotations

import os
import time


def _install() -> None:
    offset = float(os.environ.get("PRODUCER_TEST_WALL_OFFSET", "0") or 0)
    if offset:
        time.time = lambda real=time.time, offset=offset: real() + offset  # type: ignore[misc]


_install()
