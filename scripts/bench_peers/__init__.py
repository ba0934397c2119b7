"""What every benchmarked worker runs per task, whatever the system (taskd, the seed's loop,
Celery, Dramatiq, RQ): the same work, counted and timed inside the worker, reported once.

The harness (scripts/bench.py) sets, in the worker's environment:

* ``BENCH_REDIS_URL`` - the bench's own redis-server, where the report goes;
* ``BENCH_TARGET``    - the number of tasks; the one that completes it reports;
* ``BENCH_SLEEP``     - seconds each task sleeps (0: a no-op task).

Timing inside the worker, from the first task's end to the last one's, leaves out every
system's start-up (imports, connections, banner) and the harness's polling. With
``sent_at`` (the producer's ``time.time()``), each task also records its end-to-end latency.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time

RESULT_KEY = "bench:result"
TARGET = int(os.environ.get("BENCH_TARGET", "0"))
SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")

_count = itertools.count(1)  # next() is atomic under the GIL: safe from handler threads
_first: list[float] = []
_latencies: list[float] = []


def work(sent_at: float | None = None) -> None:
    """The task: sleep BENCH_SLEEP (if any), then count it."""
    if SLEEP:
        time.sleep(SLEEP)
    _done(sent_at)


async def awork(sent_at: float | None = None) -> None:
    """The same task for an asyncio handler."""
    if SLEEP:
        await asyncio.sleep(SLEEP)
    _done(sent_at)


def _done(sent_at: float | None) -> None:
    """Count one finished task; the TARGET-th writes the report."""
    now = time.time()
    if sent_at is not None:
        _latencies.append(now - sent_at)
    n = next(_count)
    if n == 1:
        _first.append(now)
    if n == TARGET:
        _report(now)


def _report(last: float) -> None:
    """One JSON document RPUSHed to RESULT_KEY: the first and last end times, the latencies."""
    import redis

    doc = {"n": TARGET, "first": _first[0] if _first else last, "last": last}
    if _latencies:
        ordered = sorted(_latencies)
        doc["p50"] = ordered[len(ordered) // 2]
        doc["p99"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    client = redis.Redis.from_url(URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.rpush(RESULT_KEY, json.dumps(doc))
    finally:
        client.close()


def sent_at_of(body: bytes) -> float | None:
    """``b"<i>|<time.time()>"`` -> the time; a body without one (throughput runs) -> None."""
    _, sep, stamp = body.partition(b"|")
    return float(stamp) if sep else None
