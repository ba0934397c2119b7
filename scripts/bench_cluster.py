#!/usr/bin/env python3
"""Scale-out benchmark: one logical queue over 1, 2, 3 Redis Cluster primaries (issue 14).

For each P of ``--primaries`` the script starts its own cluster of P primaries and no replicas
(redis-servers on free loopback ports, temp dirs, no persistence; never 6379), the N = P
shards of the queue ``{bench}`` (``daemon.keys.shard_names``: ``{bench:0}`` .. ``{bench:N-1}``,
each its own hash tag) placed one per primary (shard i on primary i mod P). Each drain:

1. every primary is flushed and T tasks are pre-loaded, spread evenly over the shards (LPUSH in
   pipelines per shard, into a staging list in the shard's slot);
2. P ``python -m daemon consume`` processes are started on the cluster URL (noop handler,
   ``--prefetch 100`` unless told, ``--log-level warning``) and waited for until every one is
   blocked in its claim (CLIENT LIST on every node);
3. the staging lists are RENAMEd onto the shards (all the tasks appear at once), and the
   pending + processing lists of every shard are polled (LLEN, pipelined per node) every
   5 ms until they are all empty; tasks/s = the tasks acked from the first poll that saw an
   ack to the first that saw none left, over that time (start-up is left out, as in
   scripts/bench.py, where each worker times itself from its first task to its last);
4. the consumers are stopped (SIGTERM); nothing may be left pending, held, delayed or dead.

Two layouts of consumers: ``per-shard`` (consumer i is given ``--queue {bench:i}``) and
``shards`` (each of the P consumers is given ``--queue {bench} --shards N`` and serves every
shard, in turns). The set-ups alternate within each of the ``--repeat`` repetitions (all
clusters stay up, so background load hits all alike; P in the order 1 2 3, then 3 2 1, so a
drift of the load does not favour one P); medians and ratios to P=1 are reported (the ratio
of the medians, and the median of each repetition's own ratio). The CPU seconds of the
redis-servers, of the consumers, of this script and of the whole machine (/proc) are recorded
per drain: with P primaries and P consumers on a 2-core machine the processes compete for the
cores (and with whatever else runs there), and the CPU columns say where the ceiling is.

Exit 0 with the report; 1 with one line when the run itself fails; 130 on Ctrl-C (every
server and consumer stopped in all three cases).

Examples::

    .venv/bin/python scripts/bench_cluster.py        # make bench-cluster: ~4-5 min
    .venv/bin/python scripts/bench_cluster.py --tasks 200000 --repeat 3 --prefetch 100
    .venv/bin/python scripts/bench_cluster.py --tasks 2000 --repeat 1 --primaries 1,2 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import redis  # noqa: E402

from daemon.keys import QueueKeys, shard_names  # noqa: E402
from tools.harness import cluster_form  # noqa: E402
from tools.harness.cluster import RedisCluster  # noqa: E402
from tools.harness.processes import end_process, spawn  # noqa: E402
from tools.harness.redis_server import RedisServer  # noqa: E402

QUEUE = "{bench}"
HANDLER = "daemon.handlers:noop"
LAYOUTS = ("per-shard", "shards")
PRELOAD_CHUNK = 1000  # values per LPUSH
PRELOAD_COMMANDS_PER_PIPELINE = 10
POLL = 0.005  # seconds between two looks at the lists
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting (/proc) --------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds; 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_seconds() -> tuple[float, float, float]:
    """CPU seconds of the whole machine (all CPUs, /proc/stat): in processes (user, nice,
    system), in interrupts (irq, softirq: loopback traffic is mostly there), and stolen by the
    hypervisor (steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuSnapshot:
    servers: list[float]
    consumers: list[float]
    own: float
    machine: tuple[float, float, float]
    at: float

    @classmethod
    def take(cls, servers: list[int], consumers: list[int]) -> CpuSnapshot:
        return cls(
            [cpu_seconds(p) for p in servers],
            [cpu_seconds(p) for p in consumers],
            cpu_seconds(os.getpid()),
            machine_seconds(),
            time.monotonic(),
        )


def cpu_used(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds between two snapshots: servers, consumers, this script, everything else."""
    servers = [b - a for a, b in zip(before.servers, after.servers, strict=True)]
    consumers = [b - a for a, b in zip(before.consumers, after.consumers, strict=True)]
    own = after.own - before.own
    processes, interrupts, steal = (
        b - a for a, b in zip(before.machine, after.machine, strict=True)
    )
    return {
        "wall_s": after.at - before.at,
        "servers_s": sum(servers),
        "busiest_server_s": max(servers),
        "consumers_s": sum(consumers),
        "busiest_consumer_s": max(consumers),
        "bench_s": own,
        "others_s": max(0.0, processes - sum(servers) - sum(consumers) - own),
        "interrupts_s": interrupts,
        "steal_s": steal,
        "machine_s": processes + interrupts + steal,
    }


# -- one cluster of P primaries with its N = P shards ------------------------------------------
@dataclass
class Setup:
    primaries: int
    cluster: RedisCluster
    shards: tuple[str, ...] = field(default=())

    @classmethod
    def launch(cls, primaries: int, workdir: Path) -> Setup:
        """Its nodes started (ports taken); `join` then forms the cluster."""
        shards = shard_names(QUEUE, primaries)
        cluster = RedisCluster(
            workdir / f"p{primaries}", primaries=primaries, replicas=0,
            slots=cluster_form.spread(shards, primaries),
        )  # fmt: skip
        try:
            cluster.launch()
        except BaseException:
            cluster.stop()
            raise
        return cls(primaries, cluster, shards)

    def join(self) -> None:
        self.cluster.join()
        for i, shard in enumerate(self.shards):
            if self.cluster.node_of(shard).port != self.node(i).port:
                raise RuntimeError(f"{shard} is not on primary {i % self.primaries}")

    def node(self, shard_index: int) -> RedisServer:
        return self.cluster.primary(shard_index % self.primaries)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.cluster.addresses) + "/"


def staging(shard: str) -> str:
    """Where a shard's tasks wait until the release (the shard's hash tag: the same slot)."""
    return f"{shard}:bench-staging"


def body_of(i: int) -> bytes:
    return b'{"id": %d, "kind": "bench", "payload": "0123456789abcdef"}' % i


def preload(setup: Setup, tasks: int) -> list[int]:
    """Flush every primary, then push task k onto the staging list of shard k mod N."""
    for node in setup.cluster.nodes:
        with contextlib.closing(node.client()) as client:
            client.flushall()
    counts = []
    n = len(setup.shards)
    for i, shard in enumerate(setup.shards):
        ids = range(i, tasks, n)
        with contextlib.closing(setup.node(i).client(socket_timeout=30)) as client:
            pipe = client.pipeline(transaction=False)
            for c, start in enumerate(range(0, len(ids), PRELOAD_CHUNK), start=1):
                pipe.lpush(
                    staging(shard), *(body_of(k) for k in ids[start : start + PRELOAD_CHUNK])
                )
                if c % PRELOAD_COMMANDS_PER_PIPELINE == 0:
                    pipe.execute()
            pipe.execute()
            counts.append(int(client.llen(staging(shard))))
        if counts[-1] != len(ids):
            raise RuntimeError(f"preload: {counts[-1]} tasks in {staging(shard)}, not {len(ids)}")
    return counts


# -- the consumers -----------------------------------------------------------------------------
def consumer_argv(
    setup: Setup, layout: str, index: int, prefetch: int, log_level: str
) -> list[str]:
    queue = ["--queue", setup.shards[index]]
    if layout == "shards":
        queue = ["--queue", QUEUE, "--shards", str(len(setup.shards))]
    return [
        sys.executable, "-m", "daemon", "consume", "--redis-url", setup.url, *queue,
        "--handler", HANDLER, "--prefetch", str(prefetch), "--worker-id", f"bench-c{index}",
        "--log-level", log_level, "--log-format", "json",
    ]  # fmt: skip


class Consumers:
    """P consumer processes (own sessions, gone with this script); stopped with SIGTERM."""

    def __init__(self, argvs: list[list[str]], workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        env["PYTHONPATH"] = str(_ROOT)
        self.logs = [workdir / f"consumer-{i}.log" for i in range(len(argvs))]
        self.procs = []
        for argv, log in zip(argvs, self.logs, strict=True):
            self.procs.append(spawn(argv, log, env=env, cwd=_ROOT))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"consumer exited with {proc.returncode}: {' | '.join(tail)}")

    def stop(self, nodes: list[RedisServer]) -> list[int]:
        """SIGTERM, and CLIENT UNBLOCK of their blocking claims (or each would finish its
        --block-timeout first); SIGKILL after 10 s."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                unblock_all(nodes)
            time.sleep(0.02)
        for i, proc in enumerate(self.procs):
            end_process(proc, 1, f"consumer {i}")
        return [proc.returncode for proc in self.procs]


def unblock_all(nodes: list[RedisServer]) -> None:
    for node in nodes:
        with contextlib.closing(node.client(socket_timeout=2)) as client:
            for entry in client.client_list():
                if "b" in entry.get("flags", ""):
                    client.client_unblock(int(entry["id"]))


def blocked_clients(nodes: list[RedisServer]) -> int:
    total = 0
    for node in nodes:
        with contextlib.closing(node.client(socket_timeout=2)) as client:
            total += int(client.info("clients")["blocked_clients"])
    return total


def wait_ready(setup: Setup, consumers: Consumers, timeout: float) -> None:
    """Until every consumer is blocked in a claim at once (started, connected, recovered)."""
    deadline = time.monotonic() + timeout
    nodes = setup.cluster.nodes
    while blocked_clients(nodes) < len(consumers.procs):
        consumers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumers not all waiting for work within {timeout:g} s")
        time.sleep(0.02)


class Lists:
    """LLEN of every shard's pending list and of each consumer's processing list in it."""

    def __init__(self, setup: Setup, workers: int) -> None:
        self.by_node: list[tuple[redis.Redis, list[str]]] = []
        names = [f"bench-c{j}" for j in range(workers)]
        for p in range(setup.primaries):
            keys = []
            for i, shard in enumerate(setup.shards):
                if i % setup.primaries == p:
                    keys += [shard, *(QueueKeys(shard).processing(w) for w in names)]
            self.by_node.append((setup.cluster.primary(p).client(socket_timeout=10), keys))

    def remaining(self) -> int:
        total = 0
        for client, keys in self.by_node:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            total += sum(pipe.execute())
        return total

    def release(self, setup: Setup) -> None:
        """RENAME each staging list onto its shard: the tasks appear, the consumers wake."""
        for p, (client, _) in enumerate(self.by_node):
            pipe = client.pipeline(transaction=False)
            for i, shard in enumerate(setup.shards):
                if i % setup.primaries == p:
                    pipe.rename(staging(shard), shard)
            pipe.execute()

    def close(self) -> None:
        for client, _ in self.by_node:
            client.close()


def check_clean(setup: Setup) -> None:
    for i, shard in enumerate(setup.shards):
        keys = QueueKeys(shard)
        with contextlib.closing(setup.node(i).client()) as client:
            for key in (keys.delayed, keys.dead):
                if client.exists(key):
                    raise RuntimeError(f"{key} is not empty after the drain: a task failed")


@dataclass(frozen=True)
class Variant:
    layout: str
    prefetch: int
    tasks: int

    @property
    def name(self) -> str:
        return f"{self.layout} prefetch {self.prefetch}"


def drain(
    setup: Setup, variant: Variant, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One timed drain of `variant.tasks` tasks by P consumers; tasks/s and CPU seconds."""
    preload(setup, variant.tasks)
    argvs = [
        consumer_argv(setup, variant.layout, i, variant.prefetch, args.log_level)
        for i in range(setup.primaries)
    ]
    consumers = Consumers(argvs, workdir)
    lists = Lists(setup, setup.primaries)
    try:
        wait_ready(setup, consumers, 30)
        servers = [n.pid or 0 for n in setup.cluster.nodes]
        before = CpuSnapshot.take(servers, consumers.pids)
        lists.release(setup)
        first = last = None
        seen, seen_at = variant.tasks, time.monotonic()
        while True:
            left = lists.remaining()
            now = time.monotonic()
            if left < seen:
                seen, seen_at = left, now
                if first is None:
                    first = (now, left)
            if left == 0:
                last = now
                break
            if now - seen_at > args.stall:
                consumers.check_alive()
                raise RuntimeError(
                    f"{variant.name}, {setup.primaries} primaries: no task acked for "
                    f"{args.stall:g} s ({left} of {variant.tasks} left)"
                )
            time.sleep(POLL)
        after = CpuSnapshot.take(servers, consumers.pids)
        consumers.check_alive()
    finally:
        lists.close()
        codes = consumers.stop(setup.cluster.nodes)
    if any(codes):
        raise RuntimeError(f"consumers exited with {codes} after SIGTERM (logs: {workdir})")
    check_clean(setup)
    assert first is not None
    span = last - first[0]
    rate = first[1] / span if span > 0 else float("inf")
    cpu = cpu_used(before, after)
    ours = cpu["servers_s"] + cpu["consumers_s"]
    return {
        "tasks_per_s": rate,
        "drained": variant.tasks,
        "tasks_per_cpu_s": variant.tasks / ours if ours > 0 else float("inf"),
        "cpu": cpu,
    }


# -- the run -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import subprocess

    import redis as redis_py

    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_py": redis_py.__version__,
        "redis_server": version.split(" sha=")[0],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    info = machine()
    started = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="taskd-bench-cluster-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        setups: dict[int, Setup] = {}
        for p in args.primaries:  # one after the other: each takes its ports
            setups[p] = Setup.launch(p, workdir)
            stack.callback(setups[p].cluster.stop)
        for p, setup in setups.items():
            setup.join()
            where = ", ".join(f"{s} on :{setup.node(i).port}" for i, s in enumerate(setup.shards))
            log(f"  cluster of {p} primar{'y' if p == 1 else 'ies'} up: {where}")
        layouts = list(args.layout)
        variants = [
            Variant(layout, prefetch, args.tasks if prefetch > 1 else args.tasks_prefetch_1)
            for layout in layouts
            for prefetch in args.prefetch
        ]
        runs: list[dict[str, Any]] = []
        for rep in range(1, args.repeat + 1):
            for variant in variants:
                order = args.primaries if rep % 2 else args.primaries[::-1]  # 1 2 3, 3 2 1, ...
                for p in order:
                    got = drain(setups[p], variant, workdir, args)
                    got.update(primaries=p, layout=variant.layout, prefetch=variant.prefetch,
                               repeat=rep)  # fmt: skip
                    runs.append(got)
                    cpu = got["cpu"]
                    log(
                        f"  run {rep}/{args.repeat} {variant.name:<22} P={p}: "
                        f"{got['tasks_per_s']:9,.0f} tasks/s ({got['drained']:,} drained); CPU "
                        f"cores: redis {cpu['servers_s'] / cpu['wall_s']:.2f}, consumers "
                        f"{cpu['consumers_s'] / cpu['wall_s']:.2f}, irq "
                        f"{cpu['interrupts_s'] / cpu['wall_s']:.2f}, others "
                        f"{cpu['others_s'] / cpu['wall_s']:.2f}"
                    )
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "queue": QUEUE,
        "handler": HANDLER,
        "log_level": args.log_level,
        "tasks": args.tasks,
        "tasks_prefetch_1": args.tasks_prefetch_1,
        "repeat": args.repeat,
        "primaries": args.primaries,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": info,
        "runs": runs,
        "table": table(runs, args.primaries),
    }


def table(runs: list[dict[str, Any]], primaries: list[int]) -> list[dict[str, Any]]:
    """One row per (layout, prefetch, P): medians, ratio to the smallest P, CPU in cores."""
    rows = []
    keys = sorted({(r["layout"], r["prefetch"]) for r in runs}, key=lambda k: (k[0], -k[1]))
    for layout, prefetch in keys:
        base = None
        base_by_rep: dict[int, float] = {}
        for p in primaries:
            mine = [
                r
                for r in runs
                if (r["layout"], r["prefetch"], r["primaries"]) == (layout, prefetch, p)
            ]
            if not mine:
                continue
            rates = [r["tasks_per_s"] for r in mine]
            med = statistics.median(rates)
            base = base or med
            base_by_rep = base_by_rep or {r["repeat"]: r["tasks_per_s"] for r in mine}
            paired = [r["tasks_per_s"] / base_by_rep[r["repeat"]] for r in mine]

            def cores(name: str, mine: list[dict[str, Any]] = mine) -> float:
                return statistics.median(r["cpu"][name] / r["cpu"]["wall_s"] for r in mine)

            rows.append({
                "layout": layout, "prefetch": prefetch, "primaries": p, "shards": p,
                "consumers": p, "tasks_per_s": med, "min": min(rates), "max": max(rates),
                "ratio": med / base, "ratio_paired": statistics.median(paired),
                "drained": all(r["drained"] for r in mine),
                "tasks_per_cpu_s": statistics.median(r["tasks_per_cpu_s"] for r in mine),
                "cores_redis": cores("servers_s"), "cores_busiest_redis": cores("busiest_server_s"),
                "cores_consumers": cores("consumers_s"),
                "cores_busiest_consumer": cores("busiest_consumer_s"),
                "cores_bench": cores("bench_s"), "cores_others": cores("others_s"),
                "cores_interrupts": cores("interrupts_s"), "cores_steal": cores("steal_s"),
                "cores_machine": cores("machine_s"),
            })  # fmt: skip
    return rows


def report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\n{m['nproc']} CPUs, {m['platform']}, Python {m['python']}, redis-py {m['redis_py']}, "
        f"{m['redis_server']}; load average at start {m['loadavg_at_start']}, at end "
        f"{m['loadavg_at_end']}; {result['started_at']}, {result['seconds']:g} s"
    )
    print(
        f"queue {result['queue']} over N = P shards, one per primary, P consumers "
        f"({result['handler']}, --log-level {result['log_level']}); median of "
        f"{result['repeat']} drains [min-max]; vs P=1: ratio of the medians; paired: median "
        f"of each repetition's ratio to its own P=1 drain; per CPU-s: tasks per CPU second of the "
        f"redis-servers and consumers together; CPU in cores (CPU s / drain wall s) of the "
        f"{m['nproc']}: others = every other process on the machine\n"
    )
    cpu = ("redis", "(busiest)", "consumers", "(busiest)", "bench", "irq", "others", "steal")
    keys = [
        "redis",
        "busiest_redis",
        "consumers",
        "busiest_consumer",
        "bench",
        "interrupts",
        "others",
        "steal",
    ]
    print(
        f"  {'layout':<9} {'prefetch':>8} {'P':>2} {'shards':>6} {'consumers':>9} {'tasks/s':>9} "
        f"{'[min-max]':>19} {'vs P=1':>7} {'paired':>7} {'per CPU-s':>9} | CPU cores: "
        + " ".join(f"{c:>9}" for c in cpu)
    )
    for r in result["table"]:
        rng = f"[{r['min']:,.0f}-{r['max']:,.0f}]"
        print(
            f"  {r['layout']:<9} {r['prefetch']:>8} {r['primaries']:>2} {r['shards']:>6} "
            f"{r['consumers']:>9} {r['tasks_per_s']:>9,.0f} {rng:>19} {r['ratio']:>6.2f}x "
            f"{r['ratio_paired']:>6.2f}x "
            f"{r['tasks_per_cpu_s']:>9,.0f} | "
            f"{'':11}" + " ".join(f"{r['cores_' + k]:>9.2f}" for k in keys)
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput of one logical queue over 1, 2, 3 Redis Cluster primaries "
        "(N = P shards, one per primary, P taskd consumers), as ratios to one primary."
    )
    parser.add_argument("--primaries", default="1,2,3", help="cluster sizes (default 1,2,3)")
    parser.add_argument(
        "--tasks",
        type=int,
        default=100_000,
        help="tasks per drain at --prefetch > 1 (default 100000)",
    )
    parser.add_argument(
        "--tasks-prefetch-1",
        type=int,
        default=0,
        metavar="N",
        help="tasks per drain at --prefetch 1 (default a tenth of --tasks)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="drains per set-up (default 5)")
    parser.add_argument(
        "--prefetch",
        type=int,
        nargs="+",
        default=[100, 1],
        help="consumers' --prefetch values (default 100 1: the fastest and taskd's default)",
    )
    parser.add_argument(
        "--layout",
        nargs="+",
        choices=LAYOUTS,
        default=list(LAYOUTS),
        help="per-shard: consumer i serves --queue {bench:i}; shards: each "
        "consumer serves --queue {bench} --shards N (default both)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("info", "warning"),
        help="the consumers' --log-level (default warning: no line per task)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="fail a drain when no task is acked for this long (default 30 s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument("--save", default="", metavar="PATH", help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        args.primaries = sorted({int(p) for p in args.primaries.split(",") if p.strip()})
    except ValueError:
        parser.error(f"--primaries={args.primaries!r}: expected numbers separated by commas")
    if not args.primaries or min(args.primaries) < 1 or max(args.primaries) > 16:
        parser.error("--primaries: 1 to 16 primaries")
    args.tasks_prefetch_1 = args.tasks_prefetch_1 or max(20, args.tasks // 10)
    if args.tasks < 20 or args.repeat < 1 or min(args.prefetch) < 1:
        parser.error("--tasks >= 20, --repeat >= 1, --prefetch >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = measure(args, log)
    except KeyboardInterrupt:
        print("interrupted; consumers and redis-servers stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 1: the benchmark itself failed
        print(f"bench-cluster failed: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
