#!/usr/bin/env python3
"""µs per ``log.info("task.done", ...)`` as the consumer logs it: worker bound, queue and task in
contextvars, JSON to a file (default /dev/null), at the given level (info: written; warning:
dropped).

    .venv/bin/python scripts/bench_log.py               # info and warning, best of 5
    .venv/bin/python scripts/bench_log.py --out /tmp/x  # lines to a real file
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import structlog  # noqa: E402

from daemon.logs import configure_logging  # noqa: E402


def per_call_us(level: str, out: str, number: int, repeat: int) -> float:
    """Best of `repeat` runs of `number` task.done calls, in µs per call."""
    with open(out, "w") as stream:  # noqa: PTH123 - a text stream, like sys.stdout
        configure_logging(level, "json", stream=stream)
        log = structlog.get_logger("taskd.consumer").bind(worker="bench-1")
        structlog.contextvars.bind_contextvars(queue="jobs", task="0123456789abcdef")
        try:
            log.info("task.done", attempt=1, duration=0.000123)  # first use: cache the logger
            times = timeit.repeat(
                lambda: log.info("task.done", attempt=1, duration=0.000123),
                number=number,
                repeat=repeat,
            )
        finally:
            structlog.contextvars.unbind_contextvars("queue", "task")
    return min(times) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/dev/null", help="where the lines go")
    parser.add_argument("--number", type=int, default=20_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    args = parser.parse_args()
    for level in ("info", "warning"):
        us = per_call_us(level, args.out, args.number, args.repeat)
        print(f"log.info('task.done') at --log-level {level:<7}: {us:6.2f} µs per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
