#!/usr/bin/env python3
"""Throughput benchmark: taskd's consumer against the seed's naive BLPOP loop.

One run starts its own redis-server (free loopback port, temp dir, no persistence), then, for
each repetition, pre-loads N tasks and drains them with, in turn:

* ``naive``   - the seed's loop: ``body = r.blpop(q, 0)[1]; handler(body)`` (one round trip
  per task; a task is lost if the process dies while handling it, and it hangs on a dead link);
* ``minimal`` - the smallest reliable loop: ``BLMOVE q proc`` then ``LREM proc 1 body``
  (two round trips per task, no taskd machinery);
* ``taskd``   - ``daemon.consumer.Consumer.run()`` in the main thread with the ``noop``
  handler, stopped by a watcher thread once the acked counter reaches N.

With ``--more``, two diagnostic loops are added (no taskd consume loop around them):

* ``reliable``  - taskd's own Redis operations: ``ReliableQueue.claim`` (BLMOVE) and
  ``ReliableQueue.ack`` (MULTI HGET LREM HDEL EXEC), on a plain client;
* ``pipelined`` - BLMOVE+LREM where each ack is pipelined with a non-blocking LMOVE of the
  next task: one round trip per task while the queue is busy (a possible protocol for taskd).

The variants alternate within each repetition (so background load hits all of them alike);
the median tasks/s of each is reported with the ratios to the naive loop. The
benchmark's goal (from the issue): taskd at least 0.45x the naive loop. Exit code 0 whether or
not the goal is met; 1 when the run itself failed, 130 on Ctrl-C.

Examples::

    .venv/bin/python scripts/bench.py --tasks 20000 --repeat 3
    .venv/bin/python scripts/bench.py --json
    .venv/bin/python scripts/bench.py --pin 1 --more     # one CPU for all: steadier numbers
    .venv/bin/python scripts/bench.py --profile 20000   # + a cProfile of one taskd drain
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Make `daemon` importable when run from a checkout without installing the package.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import redis  # noqa: E402

from daemon import config, handlers, metrics  # noqa: E402
from daemon.consumer import Consumer  # noqa: E402
from daemon.keys import QueueKeys  # noqa: E402
from daemon.logs import configure_logging  # noqa: E402
from daemon.ports import free_port  # noqa: E402
from daemon.reliable import ReliableQueue  # noqa: E402

QUEUE = "bench:queue"
WORKER = "bench"
HANDLER = "daemon.handlers:noop"
GOAL = 0.45  # taskd / naive, from the issue
PRELOAD_CHUNK = 1000  # values per LPUSH command
PRELOAD_COMMANDS_PER_PIPELINE = 10
POLL_INTERVAL = 0.002  # seconds between looks of the taskd watcher at the acked counter
VARIANTS = ("naive", "minimal", "reliable", "pipelined", "taskd")
MORE = ("reliable", "pipelined")


# -- the redis-server under test -------------------------------------------------------------
def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[int, str]]:
    """A fresh redis-server child on a free loopback port; stopped on exit, error or Ctrl-C."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH")
    with tempfile.TemporaryDirectory(prefix="taskd-bench-") as workdir:
        port = free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", workdir,
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(Path(workdir) / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {port} did not start") from None
                    time.sleep(0.05)
            client.close()
            yield port, redis_version(binary)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# -- helpers ---------------------------------------------------------------------------------
def body_of(i: int) -> bytes:
    """A small JSON task body, unique per task (~60 bytes)."""
    return b'{"id": %d, "kind": "bench", "payload": "0123456789abcdef"}' % i


def preload(client: redis.Redis, n: int) -> None:
    """Empty the database, then LPUSH n tasks in pipelined batches (FIFO: task 0 first)."""
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    queued = 0
    for start in range(0, n, PRELOAD_CHUNK):
        pipe.lpush(QUEUE, *(body_of(i) for i in range(start, min(n, start + PRELOAD_CHUNK))))
        queued += 1
        if queued == PRELOAD_COMMANDS_PER_PIPELINE:
            pipe.execute()
            queued = 0
    if queued:
        pipe.execute()
    length = client.llen(QUEUE)
    if length != n:
        raise RuntimeError(f"preload: expected {n} tasks in {QUEUE}, found {length}")


def check_drained(client: redis.Redis, name: str, extra_keys: tuple[str, ...] = ()) -> None:
    """After a drain: nothing left pending or held."""
    for key in (QUEUE, *extra_keys):
        left = client.llen(key)
        if left:
            raise RuntimeError(f"{name}: {left} tasks left in {key} after the drain")


def plain_client(port: int) -> redis.Redis:
    """A client as the seed made it: redis-py defaults (hiredis parser when installed)."""
    return redis.Redis(host="127.0.0.1", port=port)


# -- the three loops -------------------------------------------------------------------------
def run_naive(port: int, n: int, handler: handlers.Handler) -> float:
    """The seed's loop; blpop(q, 0) never returns on an empty queue, so stop after n tasks."""
    r: Any = plain_client(port)
    try:
        handled = 0
        started = time.perf_counter()
        while True:
            body = r.blpop(QUEUE, 0)[1]
            handler(body)
            handled += 1
            if handled >= n:
                break
        elapsed = time.perf_counter() - started
        check_drained(r, "naive")
        return elapsed
    finally:
        r.close()


def run_minimal(port: int, n: int, handler: handlers.Handler) -> float:
    """The smallest reliable loop: claim with BLMOVE into a processing list, ack with LREM."""
    r: Any = plain_client(port)
    processing = QueueKeys(QUEUE).processing(WORKER)
    try:
        handled = 0
        started = time.perf_counter()
        while True:
            body = r.blmove(QUEUE, processing, 0, "RIGHT", "LEFT")
            handler(body)
            r.lrem(processing, 1, body)
            handled += 1
            if handled >= n:
                break
        elapsed = time.perf_counter() - started
        check_drained(r, "minimal", (processing,))
        return elapsed
    finally:
        r.close()


def run_reliable(port: int, n: int, handler: handlers.Handler) -> float:
    """taskd's claim and ack operations (ReliableQueue), without the consume loop around."""
    r: Any = plain_client(port)
    queue = ReliableQueue(r, QUEUE, WORKER)
    try:
        handled = 0
        started = time.perf_counter()
        while handled < n:
            body = queue.claim(5.0)
            if body is None:
                raise RuntimeError(f"reliable: queue empty after {handled} of {n} tasks")
            handler(body)
            queue.ack(body)
            handled += 1
        elapsed = time.perf_counter() - started
        check_drained(r, "reliable", (queue.processing,))
        return elapsed
    finally:
        r.close()


def run_pipelined(port: int, n: int, handler: handlers.Handler) -> float:
    """BLMOVE+LREM, each LREM sent together with an LMOVE of the next task (one round trip)."""
    r: Any = plain_client(port)
    processing = QueueKeys(QUEUE).processing(WORKER)
    try:
        handled = 0
        started = time.perf_counter()
        body = r.blmove(QUEUE, processing, 0, "RIGHT", "LEFT")
        while True:
            handler(body)
            pipe = r.pipeline(transaction=False)
            pipe.lrem(processing, 1, body)
            pipe.lmove(QUEUE, processing, "RIGHT", "LEFT")
            _, body = pipe.execute()
            handled += 1
            if body is None:
                if handled >= n:
                    break
                body = r.blmove(QUEUE, processing, 0, "RIGHT", "LEFT")
        elapsed = time.perf_counter() - started
        check_drained(r, "pipelined", (processing,))
        return elapsed
    finally:
        r.close()


def acked_count() -> float:
    return float(metrics.TASKS_ACKED.labels(queue=QUEUE)._value.get())


@dataclass
class _Watch:
    """Stops the consumer once `target` tasks are acked; records when that happened."""

    consumer: Consumer
    port: int
    target: float
    timeout: float
    finished_at: float | None = None
    timed_out: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.perf_counter() + self.timeout
        try:
            while not self.done.is_set():
                if acked_count() >= self.target:
                    self.finished_at = time.perf_counter()
                    return
                if time.perf_counter() > deadline:
                    self.timed_out = True
                    return
                time.sleep(POLL_INTERVAL)
        finally:
            self.consumer.stop_requested.set()
            self._unblock_claim()

    def _unblock_claim(self) -> None:
        """Cut short the claim blocked on the empty queue (after the timing ended).

        Without this, run() returns only when BLMOVE times out (--block-timeout, 5 s by
        default). CLIENT UNBLOCK makes it return nil as on a timeout; retried until run()
        returns, in case the loop had not yet entered the claim when the stop was requested.
        """
        name = f"taskd-claim:{self.consumer.worker}"
        admin = plain_client(self.port)
        try:
            while True:
                for info in admin.client_list():
                    if info.get("name") == name:
                        admin.client_unblock(int(info["id"]))
                if self.done.wait(0.05):
                    return
        except redis.RedisError:
            return  # the consumer still stops by itself, one block timeout later
        finally:
            admin.close()


def run_taskd(
    port: int, n: int, block_timeout: float, profiler: cProfile.Profile | None = None
) -> float:
    """taskd's real loop: Consumer.run() in this (main) thread, stopped by a watcher thread.

    Timed from just before run() (startup included: a recovery script and a heartbeat, a few
    round trips) until the watcher sees the n-th ack; the watcher polls every 2 ms.
    """
    settings = config.load(
        {
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "queues": [QUEUE],
            "handler": HANDLER,
            "worker_id": WORKER,
            "block_timeout": block_timeout,
            "log_level": "warning",
            "log_format": "json",
        },
        env={},
    )
    handler = handlers.load(settings.handler)
    consumer = Consumer(settings, handler)
    watch = _Watch(consumer, port, acked_count() + n, timeout=max(120.0, n / 50))
    watcher = threading.Thread(target=watch.run, name="bench-watcher", daemon=True)
    try:
        started = time.perf_counter()
        watcher.start()
        if profiler is not None:
            profiler.enable()
        try:
            code = consumer.run()
        finally:
            if profiler is not None:
                profiler.disable()
            watch.done.set()
            watcher.join(5)
        if code != 0:
            raise RuntimeError(f"taskd: Consumer.run() returned {code}")
        if watch.timed_out or watch.finished_at is None:
            raise RuntimeError(f"taskd: {n} tasks not acked within {watch.timeout:g} s")
        check_drained(consumer.client, "taskd", (QueueKeys(QUEUE).processing(WORKER),))
        return watch.finished_at - started
    finally:
        consumer.stop_requested.set()
        consumer.client.close()
        consumer.aux_client.close()


# -- orchestration ---------------------------------------------------------------------------
def machine_info(redis_server_version: str, pinned: bool) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "redis_server": redis_server_version,
        "loadavg_at_start": [round(x, 2) for x in load],
        "pinned_cpus": sorted(os.sched_getaffinity(0)) if pinned else None,
    }


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    handler = handlers.load(HANDLER)
    with redis_server() as (port, version):
        info = machine_info(version, bool(args.cpus))
        admin = plain_client(port)
        try:
            runners: dict[str, Callable[[int], float]] = {
                "naive": lambda n: run_naive(port, n, handler),
                "minimal": lambda n: run_minimal(port, n, handler),
                "reliable": lambda n: run_reliable(port, n, handler),
                "pipelined": lambda n: run_pipelined(port, n, handler),
                "taskd": lambda n: run_taskd(port, n, args.block_timeout),
            }
            variants = [
                v
                for v in VARIANTS
                if (v != "minimal" or not args.no_minimal) and (v not in MORE or args.more)
            ]
            warmup = min(args.tasks, 2000)
            log(f"redis-server on 127.0.0.1:{port}; warm-up with {warmup} tasks per variant")
            for name in variants:
                preload(admin, warmup)
                runners[name](warmup)
            runs: dict[str, list[float]] = {name: [] for name in variants}
            for rep in range(1, args.repeat + 1):
                for name in variants:
                    preload(admin, args.tasks)
                    elapsed = runners[name](args.tasks)
                    rate = args.tasks / elapsed
                    runs[name].append(rate)
                    log(
                        f"  run {rep}/{args.repeat} {name:<9} {elapsed:7.3f} s {rate:10.0f} tasks/s"
                    )
            profile_text = None
            if args.profile:
                preload(admin, args.profile)
                profiler = cProfile.Profile()
                run_taskd(port, args.profile, args.block_timeout, profiler)
                buffer = io.StringIO()
                stats = pstats.Stats(profiler, stream=buffer)
                stats.strip_dirs().sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(30)
                profile_text = buffer.getvalue()
        finally:
            admin.close()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    info["loadavg_at_end"] = [round(x, 2) for x in load]
    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    ratios = {
        f"{name}/naive": medians[name] / medians["naive"] for name in variants if name != "naive"
    }
    return {
        "tasks": args.tasks,
        "repeat": args.repeat,
        "handler": HANDLER,
        "taskd_block_timeout": args.block_timeout,
        "machine": info,
        "runs_tasks_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "median_tasks_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "goal": {"taskd/naive": GOAL, "met": ratios["taskd/naive"] >= GOAL},
        "profile": profile_text,
    }


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\n{result['tasks']} tasks x {result['repeat']} runs, handler {result['handler']}; "
        f"{m['nproc']} CPUs, Python {m['python']}, redis-py {m['redis_py']}, "
        f"{m['redis_server'].split(' sha=')[0]}"
    )
    pinned = f"; pinned to CPUs {m['pinned_cpus']}" if m["pinned_cpus"] else ""
    print(f"load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']}{pinned}\n")
    header = f"{'variant':<9} {'median tasks/s':>15} {'min':>9} {'max':>9} {'vs naive':>9}"
    print(header)
    print("-" * len(header))
    for name, median in result["median_tasks_per_s"].items():
        rates = result["runs_tasks_per_s"][name]
        ratio = 1.0 if name == "naive" else result["ratios"][f"{name}/naive"]
        print(f"{name:<9} {median:>15,.0f} {min(rates):>9,.0f} {max(rates):>9,.0f} {ratio:>8.2f}x")
    ratio = result["ratios"]["taskd/naive"]
    verdict = "MET" if result["goal"]["met"] else "NOT MET"
    print(f"\ngoal taskd >= {GOAL:.2f}x naive: {verdict} ({ratio:.2f}x)")
    if result["profile"]:
        print("\ncProfile of one taskd drain:\n")
        print(result["profile"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Tasks/s of taskd's consumer vs. the seed's naive BLPOP loop (and a minimal "
            "BLMOVE+LREM loop), against a fresh redis-server this script starts and stops."
        ),
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain (default 20000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="drains per variant; the median counts (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument(
        "--no-minimal", action="store_true", help="skip the BLMOVE+LREM reference loop"
    )
    parser.add_argument(
        "--more",
        action="store_true",
        help="add two diagnostic loops: taskd's ReliableQueue claim+ack without the consume "
        "loop, and BLMOVE+LREM with the ack pipelined with the next claim",
    )
    parser.add_argument(
        "--block-timeout",
        type=float,
        default=config.Settings.block_timeout,
        help="taskd's --block-timeout (default %(default)g s; only delays the stop of a drain)",
    )
    parser.add_argument(
        "--pin",
        default="",
        metavar="CPUS",
        help="run this process and its redis-server on these CPUs only, e.g. 1 or 0,1 "
        "(default: no pinning)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timed runs, cProfile one taskd drain of N tasks and print the top",
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeat < 1 or args.profile < 0 or args.block_timeout <= 0:
        parser.error("--tasks and --repeat must be >= 1, --profile >= 0, --block-timeout > 0")
    try:
        args.cpus = sorted({int(c) for c in args.pin.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--pin={args.pin!r}: expected CPU numbers separated by commas")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpus:  # before redis-server starts: the child inherits the affinity
        try:
            os.sched_setaffinity(0, args.cpus)
        except OSError as exc:
            print(f"bench failed: --pin={args.pin!r}: {exc}", file=sys.stderr)
            return 1
    # taskd logs task.done at info for every task; at "warning" the stdlib logger drops it
    # (after structlog's processors have run: that part of the cost stays in the numbers).
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    configure_logging("warning", "json", stream=devnull)

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop redis-server on TERM too
    try:
        result = measure(args, log)
    except KeyboardInterrupt:
        print("interrupted; redis-server stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 1: the benchmark itself failed
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        devnull.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
