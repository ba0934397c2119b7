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
from daemon.reliable import ReliableQueue  # noqa: E402
from tools.harness.ports import free_port  # noqa: E402

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


def loops_main(argv: list[str] | None = None) -> int:
    """The in-process loops (``--loops``): naive, minimal, reliable, pipelined, taskd."""
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


# == the peers bench (the default): one process per system, each driven by its own client ======
SCRIPTS = Path(__file__).resolve().parent
PEER_QUEUE = "bench"
PEER_LATENCY_RATE = 200.0  # tasks/s of the latency runs (the goal is at 200/s)


@dataclass(frozen=True)
class System:
    """One worker set-up: how to start it, enqueue to it, and how many tasks it runs at once."""

    name: str
    label: str
    kind: str  # seed, taskd, celery, dramatiq, rq
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    parallel: int = 1  # tasks in flight at once: sizes the sleep runs
    needs_flags: tuple[str, ...] = ()  # taskd flags this set-up needs ("not built yet" if absent)
    slow: bool = False  # a peer known to run a few hundred tasks/s: a fifth of the tasks
    in_quick: bool = True  # --quick runs it (one set-up per peer keeps CI under a minute)


TASKD_HANDLER = "bench_peers.taskd_handlers:task"
TASKD_ASYNC_HANDLER = "bench_peers.taskd_handlers:atask"

SYSTEMS: tuple[System, ...] = (
    System("seed", "seed loop: BLPOP, handler (not reliable)", "seed"),
    System("taskd", "taskd at its defaults (task.done at info)", "taskd"),
    System("taskd-warning", "taskd --log-level warning", "taskd", ("--log-level", "warning")),
    System(
        "taskd-prefetch", "taskd --prefetch 100", "taskd", ("--prefetch", "100"),
        needs_flags=("--prefetch",),
    ),
    System(
        "taskd-c10", "taskd --concurrency 10 (threads)", "taskd", ("--concurrency", "10"),
        parallel=10, needs_flags=("--concurrency",),
    ),
    System(
        "taskd-async100", "taskd async def handler, --concurrency 100", "taskd",
        ("--concurrency", "100", "--handler", TASKD_ASYNC_HANDLER),
        parallel=100, needs_flags=("--concurrency",),
    ),
    System("celery-solo", "Celery -P solo", "celery", ("-P", "solo", "-c", "1")),
    System(
        "celery-t10", "Celery -P threads -c 10", "celery", ("-P", "threads", "-c", "10"),
        parallel=10, in_quick=False,
    ),
    System("dramatiq", "Dramatiq -p 1 (defaults: 8 threads, prefetch 16)", "dramatiq", parallel=8),
    System(
        "dramatiq-pf100", "Dramatiq -p 1 -t 1, prefetch 100", "dramatiq", ("-t", "1"),
        env=(("dramatiq_queue_prefetch", "100"),), in_quick=False,
    ),
    System(
        "dramatiq-t10", "Dramatiq -p 1 -t 10", "dramatiq", ("-t", "10"), parallel=10,
        in_quick=False,
    ),
    System("rq", "RQ SimpleWorker", "rq", slow=True),
)
PEER_MODULES = {"celery": "celery", "dramatiq": "dramatiq", "rq": "rq"}
LATENCY_SYSTEMS = ("seed", "taskd")
HANDLERS = {"noop": 0.0, "sleep10ms": 0.010}


@dataclass
class Drain:
    """One timed drain: tasks/s from the worker's own clock, and the worker's memory."""

    rate: float
    peak_rss_mib: float


def taskd_flags() -> set[str]:
    """The long options `taskd consume --help` lists: which optional set-ups are built."""
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "consume", "--help"],
        capture_output=True, text=True, cwd=str(_ROOT), timeout=60, check=False,
    )  # fmt: skip
    return {word.rstrip(",=") for word in out.stdout.split() if word.startswith("--")}


def unavailable(system: System, flags: set[str]) -> str | None:
    """Why this set-up cannot run here ("not built yet", "not installed"), or None."""
    missing = [f for f in system.needs_flags if f not in flags]
    if missing:
        return f"not built yet (taskd has no {', '.join(missing)})"
    module = PEER_MODULES.get(system.kind)
    if module is not None:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return "not installed (pip install -e '.[bench]')"
    return None


def worker_argv(system: System, url: str, worker: str) -> list[str]:
    """The command line that starts this system's worker against `url`."""
    py = sys.executable
    if system.kind == "seed":
        return [py, "-m", "bench_peers.seed", url, PEER_QUEUE]
    if system.kind == "taskd":
        extra = list(system.argv)
        handler = TASKD_HANDLER
        if "--handler" in extra:
            at = extra.index("--handler")
            handler = extra[at + 1]
            del extra[at : at + 2]
        return [
            py, "-m", "daemon", "consume", "--redis-url", url, "--queue", PEER_QUEUE,
            "--handler", handler, "--worker-id", worker, "--log-format", "json", *extra,
        ]  # fmt: skip
    if system.kind == "celery":
        return [
            py, "-m", "celery", "-A", "bench_peers.celery_app", "worker", "-Q", PEER_QUEUE,
            "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat",
            *system.argv,
        ]  # fmt: skip
    if system.kind == "dramatiq":
        return [
            py, "-m", "dramatiq", "bench_peers.dramatiq_app", "-p", "1", "-Q", PEER_QUEUE,
            *system.argv,
        ]  # fmt: skip
    if system.kind == "rq":
        return [
            py, "-m", "rq.cli", "worker", "-w", "rq.worker.SimpleWorker", "-u", url, "-q",
            PEER_QUEUE,
        ]  # fmt: skip
    raise ValueError(system.kind)


class Producer:
    """Enqueues the bench task through each system's own client API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)

    def close(self) -> None:
        self.client.close()

    def enqueue(self, kind: str, count: int, sent_at: float | None = None) -> None:
        """`count` tasks for a `kind` worker (with `sent_at`: one task carrying that time)."""
        getattr(self, f"_{kind}")(count, sent_at)

    def _bodies(self, count: int, sent_at: float | None) -> list[bytes]:
        suffix = b"" if sent_at is None else b"|%r" % sent_at
        return [b"%d%s" % (i, suffix) for i in range(count)]

    def _seed(self, count: int, sent_at: float | None) -> None:
        bodies = self._bodies(count, sent_at)
        for start in range(0, count, PRELOAD_CHUNK):
            self.client.rpush(PEER_QUEUE, *bodies[start : start + PRELOAD_CHUNK])

    def _taskd(self, count: int, sent_at: float | None) -> None:
        from daemon import producer

        producer.enqueue_many(self.client, PEER_QUEUE, self._bodies(count, sent_at))

    def _celery(self, count: int, sent_at: float | None) -> None:
        from bench_peers.celery_app import task

        for _ in range(count):
            task.apply_async(args=(sent_at,))

    def _dramatiq(self, count: int, sent_at: float | None) -> None:
        from bench_peers.dramatiq_app import task

        for _ in range(count):
            task.send(sent_at)

    def _rq(self, count: int, sent_at: float | None) -> None:
        from bench_peers.rq_jobs import task
        from rq import Queue

        queue = Queue(PEER_QUEUE, connection=self.client)
        for start in range(0, count, PRELOAD_CHUNK):
            size = min(PRELOAD_CHUNK, count - start)
            queue.enqueue_many([Queue.prepare_data(task, args=(sent_at,)) for _ in range(size)])


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc children lists)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task_dir in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task_dir / "children").read_text().split()]
    return pids


def tree_mib(pid: int, field_name: str) -> float:
    """The sum of /proc/<pid>/status `field_name` (VmRSS, VmHWM) over the process tree, MiB."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total / 1024


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far (INFO commandstats), less the bench's own INFO/CLIENT LIST."""
    stats: Any = client.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_client|list")
    }


class Worker:
    """A system's worker process: started, watched, stopped (TERM, then KILL)."""

    def __init__(self, system: System, url: str, workdir: Path, target: int, sleep: float) -> None:
        env = {
            **os.environ,
            **dict(system.env),
            "BENCH_REDIS_URL": url,
            "BENCH_TARGET": str(target),
            "BENCH_SLEEP": repr(sleep),
            "PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(_ROOT)]),
        }
        self.log_path = workdir / f"{system.name}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            worker_argv(system, url, f"bench-{system.name}"),
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
            start_new_session=True,
        )  # fmt: skip

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """TERM the worker's process group, KILL it after 10 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def wait_result(client: redis.Redis, worker: Worker, timeout: float) -> dict[str, Any]:
    """The worker's report (BLPOP with a 0.5 s block, the worker checked alive in between)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = client.blpop([bench_peers_result_key()], 0.5)
        if item is not None:
            return dict(json.loads(item[1]))
        worker.check_alive()
    raise RuntimeError(f"no report within {timeout:g} s (log: {worker.log_path})")


def bench_peers_result_key() -> str:
    from bench_peers import RESULT_KEY

    return RESULT_KEY


def wait_ready(client: redis.Redis, worker: Worker, timeout: float) -> None:
    """Until the worker waits for work: one of its clients blocked (BLPOP, BLMOVE, BRPOP), or,
    for a polling worker (Dramatiq), 1.5 s after its first connection; at most `timeout`."""
    deadline = time.monotonic() + timeout
    own = client.client_id()
    connected_at = None
    while time.monotonic() < deadline:
        worker.check_alive()
        others = [c for c in client.client_list() if int(c["id"]) != own]
        if any("b" in c.get("flags", "") for c in others):
            return
        if others and connected_at is None:
            connected_at = time.monotonic()
        if connected_at is not None and time.monotonic() - connected_at > 1.5:
            return
        time.sleep(0.05)


def tasks_for(system: System, sleep: float, args: argparse.Namespace) -> int:
    """Tasks per drain: --tasks for a no-op (a fifth for slow peers); ~--sleep-seconds of work."""
    if sleep:
        return max(20, int(args.sleep_seconds * system.parallel / sleep))
    return max(20, args.tasks // 5) if system.slow else args.tasks


def drain(
    system: System, url: str, workdir: Path, sleep: float, args: argparse.Namespace
) -> Drain:
    """Pre-enqueue, start the worker, wait for its report; tasks/s by the worker's own clock."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    producer = Producer(url)
    n = tasks_for(system, sleep, args)
    try:
        client.flushall()
        producer.enqueue(system.kind, n)
        worker = Worker(system, url, workdir, n, sleep)
        try:
            doc = wait_result(client, worker, timeout=60 + n * max(sleep, 0.005) * 2)
            peak = tree_mib(worker.proc.pid, "VmHWM")
        finally:
            worker.stop()
        span = doc["last"] - doc["first"]
        return Drain(rate=(n - 1) / span if span > 0 else float("inf"), peak_rss_mib=peak)
    finally:
        producer.close()
        client.close()


def idle(system: System, url: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    """An idle worker: its RSS, and the Redis commands/s it sends over --idle-seconds."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushall()
        worker = Worker(system, url, workdir, 10**9, 0.0)
        try:
            wait_ready(client, worker, 15)
            time.sleep(1.0)  # start-up traffic (recovery, registration) settles
            before, t0 = command_calls(client), time.monotonic()
            time.sleep(args.idle_seconds)
            after, t1 = command_calls(client), time.monotonic()
            worker.check_alive()
            rss = tree_mib(worker.proc.pid, "VmRSS")
        finally:
            worker.stop()
        per_command = {
            k: round((n - before.get(k, 0)) / (t1 - t0), 2)
            for k, n in after.items()
            if n > before.get(k, 0)
        }
        return {
            "idle_rss_mib": rss,
            "idle_commands_per_s": sum(per_command.values()),
            "idle_commands": per_command,
        }
    finally:
        client.close()


def latency(system: System, url: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    """p50/p99 end-to-end latency (push to the handler's end) at 200 tasks/s, one at a time."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    producer = Producer(url)
    n = max(20, int(PEER_LATENCY_RATE * args.latency_seconds))
    try:
        client.flushall()
        worker = Worker(system, url, workdir, n, 0.0)
        try:
            wait_ready(client, worker, 15)
            time.sleep(0.5)
            start = time.monotonic()
            for i in range(n):
                pause = start + i / PEER_LATENCY_RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                producer.enqueue(system.kind, 1, sent_at=time.time())
            doc = wait_result(client, worker, timeout=60)
        finally:
            worker.stop()
        return {"p50_ms": doc["p50"] * 1000, "p99_ms": doc["p99"] * 1000}
    finally:
        producer.close()
        client.close()


def peers_measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every system, every handler, --repeat times (interleaved), plus idle and latency runs."""
    sys.path.insert(0, str(SCRIPTS))
    flags = taskd_flags()
    systems = [
        s
        for s in SYSTEMS
        if (not args.only or s.name in args.only) and (s.in_quick or not args.quick)
    ]
    skipped = {s.name: why for s in systems if (why := unavailable(s, flags))}
    runnable = [s for s in systems if s.name not in skipped]
    handlers_run = [h for h in HANDLERS if not args.handler or h in args.handler]
    for name, why in skipped.items():
        log(f"  {name:<15} skipped: {why}")
    with redis_server() as (port, version), tempfile.TemporaryDirectory(
        prefix="taskd-bench-peers-"
    ) as tmp:
        url = f"redis://127.0.0.1:{port}/0"
        os.environ["BENCH_REDIS_URL"] = url  # read by bench_peers' apps when imported here
        info = machine_info(version, bool(args.cpus))
        workdir = Path(tmp)
        rates: dict[str, dict[str, list[float]]] = {h: {} for h in handlers_run}
        peaks: dict[str, float] = {}
        for rep in range(1, args.repeat + 1):
            for handler_name in handlers_run:
                for system in runnable:
                    quick_skip = args.quick and (
                        system.kind not in ("taskd", "seed") or system.name == "taskd-warning"
                    )
                    if handler_name != "noop" and quick_skip:
                        continue  # --quick: the peers' sleep runs would take most of a minute
                    try:
                        got = drain(system, url, workdir, HANDLERS[handler_name], args)
                    except (RuntimeError, redis.RedisError) as exc:  # noted, the run goes on
                        log(f"  run {rep}/{args.repeat} {handler_name} {system.name} failed: "
                            f"{str(exc)[-300:]}")
                        continue
                    rates[handler_name].setdefault(system.name, []).append(got.rate)
                    peaks[system.name] = max(peaks.get(system.name, 0.0), got.peak_rss_mib)
                    log(
                        f"  run {rep}/{args.repeat} {handler_name:<9} {system.name:<15} "
                        f"{got.rate:10,.0f} tasks/s  peak RSS {got.peak_rss_mib:5.1f} MiB"
                    )
        idles: dict[str, dict[str, float]] = {}
        for system in runnable:
            if args.quick and system.kind not in ("taskd", "seed"):
                continue  # --quick: idle and latency runs for taskd and the seed's loop only
            try:
                idles[system.name] = idle(system, url, workdir, args)
            except (RuntimeError, redis.RedisError) as exc:  # one set-up, not the whole run
                log(f"  idle {system.name:<15} failed: {exc}")
                continue
            log(
                f"  idle {system.name:<15} {idles[system.name]['idle_rss_mib']:5.1f} MiB, "
                f"{idles[system.name]['idle_commands_per_s']:.2f} Redis commands/s"
            )
        latencies: dict[str, dict[str, float]] = {}
        for system in runnable:
            if system.name in LATENCY_SYSTEMS:
                try:
                    latencies[system.name] = latency(system, url, workdir, args)
                except (RuntimeError, redis.RedisError) as exc:
                    log(f"  latency {system.name:<12} failed: {exc}")
                    continue
                log(
                    f"  latency {system.name:<12} p50 {latencies[system.name]['p50_ms']:.2f} ms"
                    f", p99 {latencies[system.name]['p99_ms']:.2f} ms at 200 tasks/s"
                )
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "systems": {s.name: s.label for s in systems},
        "skipped": skipped,
        "tasks": args.tasks,
        "sleep_seconds": args.sleep_seconds,
        "repeat": args.repeat,
        "quick": args.quick,
        "machine": info,
        "runs_tasks_per_s": rates,
        "peak_rss_mib": peaks,
        "idle": idles,
        "latency_at_200_per_s": latencies,
        "goals": goals(rates, idles, latencies, peaks),
    }


def _median(rates: dict[str, list[float]], name: str) -> float | None:
    values = rates.get(name)
    return statistics.median(values) if values else None


def goals(
    rates: dict[str, dict[str, list[float]]],
    idles: dict[str, dict[str, float]],
    latencies: dict[str, dict[str, float]],
    peaks: dict[str, float],
) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value, or "not measured" when a part is missing."""
    noop, slow = rates.get("noop", {}), rates.get("sleep10ms", {})

    def ratio(table: dict[str, list[float]], a: str, b: str) -> float | None:
        x, y = _median(table, a), _median(table, b)
        return x / y if x is not None and y else None

    def goal(text: str, value: float | None, bound: float, at_most: bool = False) -> dict[str, Any]:
        met = None if value is None else (value <= bound if at_most else value >= bound)
        return {"goal": text, "value": value, "bound": bound, "met": met}

    out = [
        goal("taskd defaults / seed loop (noop) >= 1.0", ratio(noop, "taskd", "seed"), 1.0),
        goal("taskd defaults / --log-level warning (noop) >= 0.95",
             ratio(noop, "taskd", "taskd-warning"), 0.95),
        goal("--prefetch / seed loop (noop) >= 5", ratio(noop, "taskd-prefetch", "seed"), 5.0),
        goal("--prefetch / Dramatiq prefetch 100 (noop) >= 5",
             ratio(noop, "taskd-prefetch", "dramatiq-pf100"), 5.0),
        goal("--concurrency 10 / taskd (10 ms) >= 9", ratio(slow, "taskd-c10", "taskd"), 9.0),
        goal("--concurrency 10 / Dramatiq -t 10 (10 ms) >= 1",
             ratio(slow, "taskd-c10", "dramatiq-t10"), 1.0),
        goal("100 coroutines, 10 ms async handler: tasks/s >= 5000",
             _median(slow, "taskd-async100"), 5000.0),
    ]  # fmt: skip
    p50 = {k: v["p50_ms"] for k, v in latencies.items()}
    out.append(goal("p50 latency at 200/s, taskd / seed <= 1.5",
                    p50["taskd"] / p50["seed"] if "taskd" in p50 and p50.get("seed") else None,
                    1.5, at_most=True))  # fmt: skip
    idle_taskd = idles.get("taskd", {}).get("idle_commands_per_s")
    out.append(goal("idle taskd: Redis commands/s <= 0.5", idle_taskd, 0.5, at_most=True))
    out.append(goal("taskd RSS at concurrency 1 (peak) <= 40 MiB", peaks.get("taskd"), 40.0, True))
    out.append(goal("taskd --concurrency 10 RSS (peak) <= 48 MiB", peaks.get("taskd-c10"), 48.0,
                    True))  # fmt: skip
    return out


def peers_print(result: dict[str, Any]) -> None:
    """The report: one table per handler, then idle/latency and the goals."""
    m = result["machine"]
    print(
        f"\n{m['nproc']} CPUs, {m['platform']}, Python {m['python']}, redis-py {m['redis_py']}, "
        f"{m['redis_server'].split(' sha=')[0]}; load average at start "
        f"{m['loadavg_at_start']}, at end {m['loadavg_at_end']}"
    )
    print(f"median of {result['repeat']} [min-max]; tasks/s from the worker's own clock\n")
    for handler_name, table in result["runs_tasks_per_s"].items():
        base = _median(table, "taskd")
        print(f"handler {handler_name}")
        header = (
            f"  {'system':<15} {'tasks/s':>9} {'[min-max]':>19} {'vs taskd':>9} "
            f"{'idle RSS':>9} {'peak RSS':>9}"
        )
        print(header)
        for name in result["systems"]:
            if name in result["skipped"]:
                print(f"  {name:<15} {result['skipped'][name]}")
                continue
            values = table.get(name)
            if not values:
                print(f"  {name:<15} (not run in this mode)")
                continue
            med = statistics.median(values)
            rng = f"[{min(values):,.0f}-{max(values):,.0f}]"
            vs = f"{med / base:.2f}x" if base else "-"
            idle_rss = result["idle"].get(name, {}).get("idle_rss_mib")
            idle_text = "-" if idle_rss is None else f"{idle_rss:.1f} MiB"
            print(
                f"  {name:<15} {med:>9,.0f} {rng:>19} {vs:>9} {idle_text:>9} "
                f"{result['peak_rss_mib'].get(name, 0.0):>5.1f} MiB"
            )
        print()
    print("idle Redis commands/s per consumer (INFO commandstats)")
    for name, values in result["idle"].items():
        which = ", ".join(f"{k} {v:g}" for k, v in sorted(values["idle_commands"].items()))
        print(f"  {name:<15} {values['idle_commands_per_s']:8.2f}  {which}")
    print("\nend-to-end latency at 200 tasks/s")
    for name, values in result["latency_at_200_per_s"].items():
        print(f"  {name:<15} p50 {values['p50_ms']:7.2f} ms   p99 {values['p99_ms']:7.2f} ms")
    print("\ngoals")
    for g in result["goals"]:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[g["met"]]
        value = "-" if g["value"] is None else f"{g['value']:,.2f}"
        print(f"  {verdict:<12} {g['goal']}: {value}")


def peers_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="taskd against the seed's loop, Celery, Dramatiq and RQ in one run "
        "(each peer from the optional 'bench' extra, skipped with a note when missing); "
        "--loops runs the older in-process loop comparison instead (see --loops --help); "
        "one queue over 1, 2, 3 Redis Cluster primaries is scripts/bench_cluster.py "
        "(make bench-cluster).",
    )
    parser.add_argument("--quick", action="store_true",
                        help="CI mode: 200 tasks, 1 repeat, short windows; peers: one no-op drain")
    parser.add_argument("--tasks", type=int, default=10_000,
                        help="no-op tasks per drain (default 10000; slow peers a fifth)")
    parser.add_argument("--sleep-seconds", type=float, default=3.0,
                        help="work per drain with the 10 ms handler, in seconds of one "
                        "thread's time (default 3: 300 tasks at concurrency 1)")
    parser.add_argument("--repeat", type=int, default=3, help="drains per set-up (median)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="window of the idle commands/s count (default 10: two of "
                        "taskd's 5 s blocking claims)")
    parser.add_argument("--latency-seconds", type=float, default=5.0,
                        help="duration of the 200 tasks/s latency runs (default 5)")
    parser.add_argument("--only", nargs="*", default=[], metavar="SYSTEM",
                        help=f"only these set-ups: {' '.join(s.name for s in SYSTEMS)}")
    parser.add_argument("--handler", nargs="*", default=[], choices=list(HANDLERS),
                        help="only these handlers (default both)")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument("--save", default="", metavar="PATH", help="also write the JSON here")
    parser.add_argument("--pin", default="", metavar="CPUS", help="run everything on these CPUs")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.repeat = min(args.tasks, 200), 1
        args.sleep_seconds, args.idle_seconds, args.latency_seconds = 0.2, 1.0, 0.5
    if args.tasks < 20 or args.repeat < 1 or args.sleep_seconds <= 0 or args.idle_seconds <= 0:
        parser.error("--tasks >= 20, --repeat >= 1, --sleep-seconds and --idle-seconds > 0")
    try:
        args.cpus = sorted({int(c) for c in args.pin.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--pin={args.pin!r}: expected CPU numbers separated by commas")
    return args


def main(argv: list[str] | None = None) -> int:
    """The peers bench; ``--loops ...`` runs the in-process loop comparison (loops_main)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--loops" in argv:
        return loops_main([a for a in argv if a != "--loops"])
    args = peers_args(argv)
    if args.cpus:
        try:
            os.sched_setaffinity(0, args.cpus)
        except OSError as exc:
            print(f"bench failed: --pin={args.pin!r}: {exc}", file=sys.stderr)
            return 1

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = peers_measure(args, log)
    except KeyboardInterrupt:
        print("interrupted; workers and redis-server stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 1: the benchmark itself failed
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        peers_print(result)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
