"""Soak test: the whole stack under load and scheduled faults, then a verdict from the records.

`python -m daemon.soak` (or `scripts/soak.py`, `taskd soak`) starts, in a run folder, a
redis-server with AOF (appendfsync always), the TCP fault proxy in front of it and a supervisord
built from conf/supervisord.conf whose consumers and subscriber reach Redis through the proxy and
run `daemon.soak_handler:handle`, which records every task it handles in files outside Redis.
A producer pushes tasks straight into Redis at `--rate` while a seeded schedule injects faults
(network, Redis, process, poison tasks). At the end the backlog drains, and the verdict is
reconciled from the records: nothing lost, every fault detected and recovered within its bound,
dead letters exactly the tasks designed to fail, no memory or fd slope. See docs/soak.md.

Layout of this module: pure parts first (flags, schedule, records, reconciliation, leak slopes,
log parsing, fault evaluation: unit-tested without processes), then the processes (Redis, proxy,
supervisord), the live threads (producer, sampler), the run itself, and the report.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, NoReturn, TextIO
from xmlrpc.client import ServerProxy

from daemon.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNAVAILABLE = 69  # the stack could not be started or attached to
EXIT_CONFIG = 78  # bad flags: one line on stderr

MAX_SOCKET_PATH = 80  # longer run folders get supervisord's socket in a short temp folder
IDLE_GIVE_UP = 5.0  # seconds Redis may hold nothing while tasks are missing, at the end

DEFAULT_QUEUE = "task:prodcons:queue"
DEFAULT_CHANNEL = "task:pubsub:channel"
DEFAULT_HANDLER = "daemon.soak_handler:handle"
SUBSCRIBER_HANDLER = "daemon.soak_handler:handle"

BLACKHOLE = "blackhole"
RESET = "reset"
LATENCY = "latency"
REDIS_KILL = "redis-kill"
REDIS_STOP = "redis-stop"
CONSUMER_KILL = "consumer-kill"
CONSUMER_STOP = "consumer-stop"
FAIL_BURST = "fail-burst"
HANG = "hang"
OOM = "oom"
LONG_OUTAGE = "long-outage"
KINDS: tuple[str, ...] = (
    BLACKHOLE,
    RESET,
    LATENCY,
    REDIS_KILL,
    REDIS_STOP,
    CONSUMER_KILL,
    CONSUMER_STOP,
    FAIL_BURST,
    HANG,
    OOM,
    LONG_OUTAGE,
)
PROXY_KINDS = frozenset({BLACKHOLE, RESET, LATENCY})
REDIS_KINDS = frozenset({REDIS_KILL, REDIS_STOP})
# every consumer must reconnect or carry on
LINK_KINDS = PROXY_KINDS | REDIS_KINDS | frozenset({LONG_OUTAGE})
CONSUMER_KINDS = frozenset({CONSUMER_KILL, CONSUMER_STOP})
TASK_KINDS = frozenset({FAIL_BURST, HANG})

SIMULATES = {
    BLACKHOLE: "a NAT or firewall silently forgets every flow (no FIN, no RST)",
    RESET: "a failover or load-balancer restart resets every connection at once",
    LATENCY: "a slow, congested link (200 ms +/- 50 ms per direction)",
    REDIS_KILL: "Redis crashes (kill -9) and restarts from its AOF",
    REDIS_STOP: "Redis freezes (SIGSTOP: swap storm, long fork, DEBUG SLEEP)",
    CONSUMER_KILL: "a consumer is killed (kill -9: OOM killer, operator)",
    CONSUMER_STOP: "a consumer freezes as a whole (SIGSTOP): only the outside watchdog can act",
    FAIL_BURST: "a burst of tasks whose handler always raises (poison tasks)",
    HANG: "a task whose handler never returns (the stall watchdog must exit the process)",
    OOM: "Redis is full (maxmemory reached, noeviction) while producers keep pushing",
    LONG_OUTAGE: "Redis is down for days: thousands of reconnect attempts (a tiny backoff cap)",
}

# redis-py's FullJitterBackoff computed `base * 2 ** failures` and overflowed a float from the
# 1,024th failure on; a long outage that does not get past this many attempts proves nothing.
LONG_OUTAGE_MIN_ATTEMPTS = 1100
# The reconnect backoff of a stack whose schedule has a long outage: at the default one (0.2 s
# base, 5 s cap) thousands of attempts take hours; at 10 ms they take seconds.
LONG_OUTAGE_BACKOFF = (0.001, 0.01)
OOM_FILLER_KEY = "soak:oom-filler"  # a list of OOM_CHUNK-byte strings, deleted at the end
OOM_CHUNK = 64 * 1024


class UsageError(Exception):
    """A bad flag or value; str() is the one line shown before exit code 78."""


class StackError(Exception):
    """The stack could not be started or attached to (exit 69)."""


# ---------------------------------------------------------------------------- flags, pure
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s|ms)?", re.IGNORECASE)
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h`, `1h30m`, `45` (seconds) -> seconds; raises ValueError otherwise."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError(f"{text!r}: expected a duration such as 90s, 10m or 2h")
    pos, total, parts = 0, 0.0, 0
    while pos < len(raw):
        match = _DURATION.match(raw, pos)
        if not match or match.end() == pos:
            raise ValueError(f"{text!r}: expected a duration such as 90s, 10m or 2h")
        unit = match.group(2)
        if unit is None and match.end() != len(raw):
            raise ValueError(f"{text!r}: expected a duration such as 90s, 10m or 2h")
        total += float(match.group(1)) * _UNIT[unit]
        pos = match.end()
        parts += 1
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"{text!r}: expected a duration above zero")
    return total


def parse_faults(text: str) -> tuple[str, ...]:
    """`all`, `none`, or a comma list of fault kinds (order kept, duplicates dropped)."""
    raw = text.strip().lower()
    if raw == "all":
        return KINDS
    if raw in ("none", ""):
        return ()
    kinds: list[str] = []
    for item in raw.split(","):
        name = item.strip().replace("_", "-")
        if name not in KINDS:
            raise ValueError(
                f"{item.strip()!r}: unknown fault; expected all, none or some of {', '.join(KINDS)}"
            )
        if name not in kinds:
            kinds.append(name)
    return tuple(kinds)


def format_seconds(seconds: float) -> str:
    """`754.2` -> `12:34` (minutes:seconds), `3723` -> `1:02:03`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# ---------------------------------------------------------------------------- timings and bounds
@dataclass(frozen=True)
class Timings:
    """The consumer settings of a soak stack: short, so faults are detected within seconds."""

    block: float = 1.0
    socket: float = 2.0
    connect: float = 1.0
    stall: float = 6.0
    task: float = 4.0
    max_attempts: int = 3
    backoff_base: float = 0.1
    backoff_cap: float = 1.0
    retry_base: float = 0.2
    retry_cap: float = 1.0
    heartbeat_ttl: float = 4.0
    recovery_interval: float = 1.0
    ping_interval: float = 1.0
    drain: float = 10.0
    watchdog_grace: float = 2.0
    watchdog_tick: float = 5.0  # supervisord's TICK_5

    def env(self) -> dict[str, str]:
        """The TASKD_* environment every process of the soak stack gets."""
        return {
            "TASKD_BLOCK_TIMEOUT": f"{self.block:g}",
            "TASKD_SOCKET_TIMEOUT": f"{self.socket:g}",
            "TASKD_CONNECT_TIMEOUT": f"{self.connect:g}",
            "TASKD_STALL_TIMEOUT": f"{self.stall:g}",
            "TASKD_TASK_TIMEOUT": f"{self.task:g}",
            "TASKD_MAX_ATTEMPTS": str(self.max_attempts),
            "TASKD_BACKOFF_BASE": f"{self.backoff_base:g}",
            "TASKD_BACKOFF_CAP": f"{self.backoff_cap:g}",
            "TASKD_RETRY_BASE": f"{self.retry_base:g}",
            "TASKD_RETRY_CAP": f"{self.retry_cap:g}",
            "TASKD_HEARTBEAT_TTL": f"{self.heartbeat_ttl:g}",
            "TASKD_RECOVERY_INTERVAL": f"{self.recovery_interval:g}",
            "TASKD_PING_INTERVAL": f"{self.ping_interval:g}",
            "TASKD_DRAIN_TIMEOUT": f"{self.drain:g}",
        }


@dataclass(frozen=True)
class FaultSpec:
    """How long a fault is held and planned to settle, and the bounds the verdict holds it to.

    `detect_bound`: seconds from the fault's start to its detection (None: none expected).
    `recover_bound`: seconds from the fault's end to its recovery.
    """

    kind: str
    active: float
    settle: float
    detect_bound: float | None
    recover_bound: float


def soak_timings(kinds: Iterable[str]) -> Timings:
    """The stack's timings for a schedule: a tiny reconnect backoff when it has a long outage.

    Settings are read once at process start, so the backoff cannot be shrunk for the outage
    alone; a smaller cap only makes every other fault's reconnect quicker (its bound follows).
    """
    if LONG_OUTAGE not in kinds:
        return Timings()
    base, cap = LONG_OUTAGE_BACKOFF
    return Timings(backoff_base=base, backoff_cap=cap)


def fault_specs(compressed: bool, t: Timings) -> dict[str, FaultSpec]:
    """Per kind: held/settle times (full or compressed) and bounds derived from the timings."""
    # A blocked claim or a silent reply is noticed after the socket timeout (block timeout +
    # margin); then reconnects retry within the backoff cap + the connect deadline.
    link_detect = t.socket + t.block + 3.0
    link_recover = t.socket + t.connect + t.backoff_cap + 6.0
    restart = 15.0  # supervisord start + interpreter start + first claim, on a loaded host
    outside_watchdog = t.stall + t.watchdog_grace + t.watchdog_tick + 7.0
    hang_one = t.task + 1.0 + restart / 2  # task timeout + watchdog interval + restart
    hang_all = t.max_attempts * hang_one + 10.0
    held = (
        {BLACKHOLE: 6.0, LATENCY: 8.0, REDIS_STOP: 4.0, OOM: 8.0, LONG_OUTAGE: 15.0}
        if compressed
        else {BLACKHOLE: 30.0, LATENCY: 60.0, REDIS_STOP: 20.0, OOM: 30.0, LONG_OUTAGE: 60.0}
    )
    settle = 3.0 if compressed else 20.0
    expected_stop = t.stall + t.watchdog_grace + t.watchdog_tick  # until the watchdog acts
    expected_hang = t.max_attempts * (t.task + 3.0)
    return {
        BLACKHOLE: FaultSpec(BLACKHOLE, held[BLACKHOLE], settle, link_detect, link_recover),
        RESET: FaultSpec(RESET, 0.0, settle, link_detect, link_recover),
        LATENCY: FaultSpec(LATENCY, held[LATENCY], settle, None, link_recover),
        REDIS_KILL: FaultSpec(REDIS_KILL, 1.0, settle, link_detect, link_recover),
        REDIS_STOP: FaultSpec(REDIS_STOP, held[REDIS_STOP], settle, link_detect, link_recover),
        CONSUMER_KILL: FaultSpec(CONSUMER_KILL, 0.0, settle, 5.0, restart),
        CONSUMER_STOP: FaultSpec(CONSUMER_STOP, expected_stop, settle, outside_watchdog, restart),
        FAIL_BURST: FaultSpec(FAIL_BURST, 0.0, settle, None, 30.0),
        HANG: FaultSpec(HANG, expected_hang, settle, t.task + 15.0, hang_all),
        # OOM: noticed by the first write a consumer gets refused (heartbeat, claim, ack)
        OOM: FaultSpec(OOM, held[OOM], settle, link_detect, link_recover),
        # the held time of a long outage is planned; it lasts until the attempts are made
        LONG_OUTAGE: FaultSpec(
            LONG_OUTAGE, held[LONG_OUTAGE], settle, link_detect, link_recover + restart / 3
        ),
    }


# ---------------------------------------------------------------------------- schedule, pure
@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule; `at` is seconds after production starts."""

    index: int
    kind: str
    at: float
    active: float
    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)


class ScheduleError(ValueError):
    """The faults asked for do not fit into the duration."""


def schedule_margins(duration: float, compressed: bool) -> tuple[float, float]:
    """Quiet seconds before the first fault (warm-up) and after the last one (tail)."""
    if compressed:
        return 3.0, 3.0
    return min(60.0, max(20.0, duration * 0.05)), min(60.0, max(20.0, duration * 0.05))


def plan_schedule(
    kinds: Sequence[str],
    duration: float,
    seed: int,
    compressed: bool,
    consumers: int,
    timings: Timings | None = None,
) -> list[PlannedFault]:
    """The seeded fault schedule: every kind once per cycle, in random order, spread out.

    As many whole cycles as fit into the duration (at least one); the slack is spread at random
    between faults. The same seed gives the same schedule. Raises ScheduleError when one cycle
    does not fit.
    """
    if not kinds:
        return []
    specs = fault_specs(compressed, timings or Timings())
    warmup, tail = schedule_margins(duration, compressed)
    cycle = sum(specs[k].active + specs[k].settle for k in kinds)
    available = duration - warmup - tail
    if available < cycle:
        need = math.ceil(cycle + warmup + tail)
        hint = "" if compressed else ", or use --compressed"
        raise ScheduleError(
            f"--duration {duration:g}s is too short for faults {','.join(kinds)}: they need at "
            f"least {need}s; use a longer --duration or fewer --faults{hint}"
        )
    rng = random.Random(seed)
    cycles = max(1, int(available // cycle))
    order: list[str] = []
    for _ in range(cycles):
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    slack = available - cycles * cycle
    weights = [rng.random() for _ in order]
    total = sum(weights) or 1.0
    plan: list[PlannedFault] = []
    at = warmup
    for index, kind in enumerate(order):
        at += slack * weights[index] / total
        spec = specs[kind]
        target = f"consumer_{rng.randrange(consumers):02d}" if kind in CONSUMER_KINDS else ""
        params: dict[str, Any] = {}
        if kind == LATENCY:
            params = {"latency_ms": 200, "jitter_ms": 50}
        elif kind == FAIL_BURST:
            params = {"count": 10 if compressed else 30}
        elif kind == OOM:  # a backlog the consumers must drain while Redis refuses writes
            params = {"backlog": 1000 if compressed else 5000, "margin_mb": 1}
        elif kind == LONG_OUTAGE:  # held until every consumer made this many attempts
            params = {
                "attempts": 1500 if compressed else 5000,
                "max_hold_s": 3 * spec.active,
            }
        plan.append(PlannedFault(index, kind, round(at, 3), spec.active, target, params))
        at += spec.active + spec.settle
    return plan


# ---------------------------------------------------------------------------- records, pure
KIND_CODES = {"ok": 1, "fail": 2, "hang": 3}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}


@dataclass(frozen=True)
class Record:
    """One line written by daemon/soak_handler.py: one handling of a task or message."""

    id: str
    enqueued: float
    handled: float
    pid: int
    worker: str
    outcome: str


def parse_record(line: str) -> Record | None:
    """Parse a record line; None for a torn or foreign line (counted, never fatal)."""
    parts = line.split()
    if len(parts) != 6:
        return None
    try:
        return Record(parts[0], float(parts[1]), float(parts[2]), int(parts[3]), parts[4], parts[5])
    except ValueError:
        return None


def record_files(directory: Path) -> list[Path]:
    """Every per-process record file of a run, in a stable order."""
    return sorted(directory.glob("*.rec")) if directory.is_dir() else []


def read_records(directory: Path, since: float = 0.0) -> Iterator[Record]:
    """Stream the records of every process (handled at or after `since`)."""
    for path in record_files(directory):
        with open(path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                record = parse_record(line)
                if record is not None and record.handled >= since:
                    yield record


class ProducedSet:
    """What the producer pushed (LPUSH returned): enqueue time and kind per task id.

    Ids are `base + n` with n = 1, 2, 3...: compact arrays instead of a dict keep a 2-hour run
    at 200 tasks/s within a few tens of MB.
    """

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.enqueued = array("d")
        self.kinds = bytearray()  # 0 = never pushed

    def add(self, task_id: int, enqueued: float, kind: str) -> None:
        n = task_id - self.base
        if n < 0:
            raise ValueError(f"task id {task_id} below the run's base {self.base}")
        while len(self.kinds) <= n:
            self.kinds.append(0)
            self.enqueued.append(0.0)
        if not self.kinds[n]:  # a re-push after a lost reply keeps the first enqueue time
            self.kinds[n] = KIND_CODES[kind]
            self.enqueued[n] = enqueued

    def index(self, task_id: str) -> int | None:
        """The slot of a recorded id, or None when this run never pushed it."""
        try:
            n = int(task_id) - self.base
        except ValueError:
            return None
        if 0 <= n < len(self.kinds) and self.kinds[n]:
            return n
        return None

    def ids_of(self, kind: str) -> list[int]:
        code = KIND_CODES[kind]
        return [n + self.base for n, k in enumerate(self.kinds) if k == code]

    def __len__(self) -> int:
        return len(self.kinds) - self.kinds.count(0)


def read_produced(path: Path, base: int) -> ProducedSet:
    """Load `produced.tsv` (id, enqueue time, kind per line) written by the producer."""
    produced = ProducedSet(base)
    if path.exists():
        with open(path, encoding="ascii") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 3 and parts[2] in KIND_CODES:
                    produced.add(int(parts[0]), float(parts[1]), parts[2])
    return produced


# ---------------------------------------------------------------------------- phases, pure
@dataclass(frozen=True)
class Window:
    """A stretch of the run affected by a fault (from its start until the backlog settled)."""

    start: float
    end: float
    label: str


class WindowIndex:
    """Answers "does [a, b] touch a fault window, and which one" in O(log n)."""

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = sorted(windows, key=lambda w: w.start)
        self.merged: list[tuple[float, float]] = []
        for w in self.windows:
            if self.merged and w.start <= self.merged[-1][1]:
                self.merged[-1] = (self.merged[-1][0], max(self.merged[-1][1], w.end))
            else:
                self.merged.append((w.start, w.end))
        self.ends = [end for _, end in self.merged]

    def overlaps(self, a: float, b: float) -> bool:
        i = bisect.bisect_left(self.ends, a)
        return i < len(self.merged) and self.merged[i][0] <= b

    def label_at(self, t: float, margin: float = 0.0) -> str | None:
        """The window around `t` (+/- margin) that started last, if any."""
        found = [w for w in self.windows if w.start - margin <= t <= w.end + margin]
        return max(found, key=lambda w: w.start).label if found else None


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(values: Iterable[float]) -> dict[str, Any]:
    """count, p50, p95, p99, max (seconds) of end-to-end latencies."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
    }


# ---------------------------------------------------------------------------- reconciliation, pure
@dataclass
class Reconciliation:
    """The verdict's arithmetic, from the producer's list, the records and the dead letters."""

    produced: int = 0
    produced_ok: int = 0
    designed_fail: list[int] = field(default_factory=list)
    designed_hang: list[int] = field(default_factory=list)
    done: int = 0
    lost: list[int] = field(default_factory=list)
    duplicates: int = 0
    duplicate_handlings: int = 0
    duplicates_near: dict[str, int] = field(default_factory=dict)
    duplicates_unexplained: list[int] = field(default_factory=list)
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)
    dead_expected: list[int] = field(default_factory=list)
    dead_found: list[int] = field(default_factory=list)
    dead_missing: list[int] = field(default_factory=list)
    dead_unexpected: list[int] = field(default_factory=list)
    dead_foreign: int = 0
    dead_entries: int = 0
    recorded_not_produced: int = 0
    bad_lines: int = 0
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    pubsub_received: int = 0
    pubsub_seen: dict[int, float] = field(default_factory=dict, repr=False)  # n -> published
    # first successful handling of every done task: when, and its end-to-end latency
    done_at: array = field(default_factory=lambda: array("d"), repr=False)
    done_latency: array = field(default_factory=lambda: array("d"), repr=False)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("done_at")
        doc.pop("done_latency")
        doc.pop("pubsub_seen")
        doc["lost_count"] = len(self.lost)
        doc["lost"] = self.lost[:100]
        doc["dead_letters_as_designed"] = not self.dead_missing and not self.dead_unexpected
        return doc


def reconcile(
    produced: ProducedSet,
    records: Iterable[Record],
    dead_ids: Iterable[int | None],
    windows: Sequence[Window] = (),
    duplicate_margin: float = 10.0,
) -> Reconciliation:
    """Count produced, done, lost, duplicates, dead letters and per-phase latency.

    lost = produced, designed to succeed, never recorded as done. A dead letter is `None` when
    its body is not a task of this run (foreign). A duplicate is a task done more than once;
    it is "near" a fault when a later handling falls in a fault window (+ margin).
    """
    rec = Reconciliation()
    rec.produced = len(produced)
    rec.designed_fail = produced.ids_of("fail")
    rec.designed_hang = produced.ids_of("hang")
    rec.produced_ok = rec.produced - len(rec.designed_fail) - len(rec.designed_hang)
    index = WindowIndex(windows)
    done_count = array("H", bytes(2 * len(produced.kinds)))
    first_done = array("d", bytes(8 * len(produced.kinds)))
    later: dict[int, list[tuple[float, int, str]]] = defaultdict(list)
    messages: set[str] = set()
    phases: dict[str, list[float]] = {"quiet": [], "fault": []}
    for r in records:
        if r.outcome == "msg":
            messages.add(r.id)
            with contextlib.suppress(ValueError):
                rec.pubsub_seen[int(r.id[1:]) - produced.base] = r.enqueued
            continue
        n = produced.index(r.id)
        if n is None:
            rec.recorded_not_produced += 1
            continue
        if r.outcome != "ok":
            continue
        if done_count[n] < 65535:
            done_count[n] += 1
        if done_count[n] == 1:
            first_done[n] = r.handled
        else:
            later[n].append((r.handled, r.pid, r.worker))
    for n, kind in enumerate(produced.kinds):
        if kind != KIND_CODES["ok"]:
            continue
        if not done_count[n]:
            rec.lost.append(n + produced.base)
            continue
        rec.done += 1
        enqueued, handled = produced.enqueued[n], first_done[n]
        latency = max(0.0, handled - enqueued)
        rec.done_at.append(handled)
        rec.done_latency.append(latency)
        phases["fault" if index.overlaps(enqueued, handled) else "quiet"].append(latency)
    rec.latency = {phase: latency_summary(values) for phase, values in phases.items()}
    rec.latency["all"] = latency_summary(rec.done_latency)
    near: Counter[str] = Counter()
    for n, extra in sorted(later.items()):
        rec.duplicates += 1
        rec.duplicate_handlings += len(extra)
        times = [first_done[n]] + [t for t, _, _ in extra]
        label = next(
            (lab for t in times if (lab := index.label_at(t, duplicate_margin)) is not None),
            None,
        )
        if label is None:
            rec.duplicates_unexplained.append(n + produced.base)
        else:
            near[label] += 1
        if len(rec.duplicate_examples) < 20:
            rec.duplicate_examples.append(
                {
                    "id": n + produced.base,
                    "handled": [round(t, 3) for t in times],
                    "workers": [w for _, _, w in extra],
                    "near": label,
                }
            )
    rec.duplicates_near = dict(near)
    expected = set(rec.designed_fail) | set(rec.designed_hang)
    found: set[int] = set()
    for dead in dead_ids:
        rec.dead_entries += 1
        if dead is None:
            rec.dead_foreign += 1
        else:
            found.add(dead)
    rec.dead_expected = sorted(expected)
    rec.dead_found = sorted(found)
    rec.dead_missing = sorted(expected - found)
    rec.dead_unexpected = sorted(found - expected)
    rec.pubsub_received = len(messages)
    return rec


def pubsub_losses(
    published: int, seen: dict[int, float], windows: Sequence[Window], margin: float = 3.0
) -> tuple[dict[str, int], int]:
    """Lost pub/sub messages (1..published not seen) per fault window, and outside any.

    A lost message's publish time is taken from the last message received before it.
    """
    index = WindowIndex(windows)
    ids = sorted(seen)
    by_fault: Counter[str] = Counter()
    outside = 0
    for n in range(1, published + 1):
        if n in seen:
            continue
        i = bisect.bisect_left(ids, n)
        neighbour = ids[i - 1] if i > 0 else (ids[i] if i < len(ids) else None)
        label = None if neighbour is None else index.label_at(seen[neighbour], margin)
        if label is None:
            outside += 1
        else:
            by_fault[label] += 1
    return dict(by_fault), outside


# ---------------------------------------------------------------------------- leaks, pure
@dataclass(frozen=True)
class LeakPolicy:
    """When a resource slope says "leak". Stated in the report.

    The first `warmup_fraction` (at least `warmup_min` s) of a process's longest incarnation
    is skipped (imports, first connections, allocator arenas). A window shorter than
    `min_window` s is not judged. A leak is a robust (Theil-Sen) slope above the per-hour
    threshold whose fitted growth over the window is also above the minimum growth, and that
    both halves of the window show (at half the threshold), so noise on a short window or a
    one-off step cannot fail a run, and a slow leak needs a long run to show.
    """

    warmup_fraction: float = 0.25
    warmup_min: float = 15.0
    min_window: float = 30.0
    min_samples: int = 10
    rss_mb_per_hour: float = 20.0
    rss_min_growth_mb: float = 2.0
    fds_per_hour: float = 60.0
    fds_min_growth: float = 5.0


def theil_sen(
    xs: Sequence[float], ys: Sequence[float], min_gap: float = 0.0, max_points: int = 200
) -> float:
    """Median of pairwise slopes of points at least `min_gap` apart (robust to outliers).

    0.0 with fewer than 2 such points. Close pairs are skipped because sampling noise divided
    by a tiny time step swamps any trend.
    """
    if len(xs) < 2:
        return 0.0
    if len(xs) > max_points:
        step = len(xs) / max_points
        picks = [int(i * step) for i in range(max_points)]
        xs = [xs[i] for i in picks]
        ys = [ys[i] for i in picks]
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] - xs[i] > 0 and xs[j] - xs[i] >= min_gap
    ]
    return float(statistics.median(slopes)) if slopes else 0.0


def judge_slope(
    ts: Sequence[float],
    values: Sequence[float],
    per_hour_limit: float,
    min_growth: float,
    policy: LeakPolicy,
) -> dict[str, Any]:
    """Judge one incarnation's series: skip warm-up, fit a slope, compare with the limits.

    A leak keeps growing: the slope over the window, and over each of its halves (at half the
    limit), must say so; a one-off step (a cache filled once) grows in one half only.
    """
    if not ts:
        return {"judged": False, "leak": False, "why": "no samples"}
    span = ts[-1] - ts[0]
    skip = max(policy.warmup_min, policy.warmup_fraction * span)
    start = ts[0] + skip
    pairs = [(t, v) for t, v in zip(ts, values, strict=True) if t >= start]
    window = pairs[-1][0] - pairs[0][0] if len(pairs) >= 2 else 0.0
    if window < policy.min_window or len(pairs) < policy.min_samples:
        return {
            "judged": False,
            "leak": False,
            "why": f"window after warm-up {window:.0f}s < {policy.min_window:g}s",
            "window_s": round(window, 1),
        }
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    slope = theil_sen(xs, ys, min_gap=window / 4)  # units per second
    middle = bisect.bisect_left(xs, xs[0] + window / 2)
    halves = [
        theil_sen(xs[:middle], ys[:middle], min_gap=window / 8),
        theil_sen(xs[middle:], ys[middle:], min_gap=window / 8),
    ]
    per_hour = slope * 3600.0
    growth = slope * window
    steady = min(halves) * 3600.0 > per_hour_limit / 2
    leak = per_hour > per_hour_limit and growth > min_growth and steady
    return {
        "judged": True,
        "leak": leak,
        "slope_per_hour": round(per_hour, 3),
        "half_slopes_per_hour": [round(h * 3600.0, 3) for h in halves],
        "fitted_growth": round(growth, 3),
        "window_s": round(window, 1),
        "first": pairs[0][1],
        "last": pairs[-1][1],
    }


def judge_process(
    samples: Sequence[tuple[float, int, float, float]], policy: LeakPolicy
) -> dict[str, Any]:
    """(time, pid, rss MB, open fds) samples of one process name, across restarts.

    The longest incarnation (one pid) is judged: a restart resets memory, so a slope across
    pids means nothing.
    """
    by_pid: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for t, pid, mb, nfds in samples:
        by_pid[pid].append((t, mb, nfds))
    if not by_pid:
        return {"judged": False, "leak": False, "why": "no samples", "incarnations": 0}
    pid, series = max(by_pid.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
    ts = [s[0] for s in series]
    rss = judge_slope(
        ts, [s[1] for s in series], policy.rss_mb_per_hour, policy.rss_min_growth_mb, policy
    )
    fds = judge_slope(
        ts, [s[2] for s in series], policy.fds_per_hour, policy.fds_min_growth, policy
    )
    return {
        "judged": rss["judged"] and fds["judged"],
        "leak": rss["leak"] or fds["leak"],
        "pid": pid,
        "incarnations": len(by_pid),
        "rss_mb": rss,
        "fds": fds,
        "rss_mb_min": round(min(s[2] for s in samples), 1),
        "rss_mb_max": round(max(s[2] for s in samples), 1),
    }


# ---------------------------------------------------------------------------- logs, pure
_SUPERVISORD_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ (.*)$")
_SPAWNED = re.compile(r"^spawned: '([^']+)' with pid (\d+)")
_ENDED = re.compile(r"^(exited|stopped): (\S+) \((.*)\)\s*$")


@dataclass(frozen=True)
class ProcessEvent:
    """A line of supervisord's log about a child: spawned, exited (on its own) or stopped."""

    t: float
    event: str
    name: str
    detail: str = ""
    pid: int | None = None


def parse_supervisord_log(lines: Iterable[str]) -> list[ProcessEvent]:
    """spawned/exited/stopped events from supervisord's log (its timestamps are local time)."""
    out: list[ProcessEvent] = []
    for line in lines:
        match = _SUPERVISORD_LINE.match(line.rstrip("\n"))
        if not match:
            continue
        stamp, millis, message = match.groups()
        try:
            t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000.0
        except ValueError:
            continue
        if spawned := _SPAWNED.match(message):
            out.append(ProcessEvent(t, "spawned", spawned.group(1), pid=int(spawned.group(2))))
        elif ended := _ENDED.match(message):
            out.append(ProcessEvent(t, ended.group(1), ended.group(2), ended.group(3)))
    return out


def iso_to_epoch(text: str) -> float | None:
    """`2026-01-02T03:04:05.123456Z` -> unix time; None when unreadable."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def parse_json_events(
    lines: Iterable[str], names: Sequence[str]
) -> list[tuple[float, dict[str, Any]]]:
    """(time, document) of the JSON log lines whose event is one of `names`."""
    out: list[tuple[float, dict[str, Any]]] = []
    for line in lines:
        if not any(name in line for name in names):  # cheap filter before json.loads
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("event") not in names:
            continue
        t = iso_to_epoch(str(doc.get("timestamp", "")))
        if t is not None:
            out.append((t, doc))
    return sorted(out, key=lambda item: item[0])


def read_lines(paths: Iterable[Path]) -> Iterator[str]:
    """Lines of several (possibly rotated, possibly missing) log files."""
    for path in paths:
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            yield from f


# ---------------------------------------------------------------------------- fault evaluation
@dataclass
class FaultRun:
    """What the run did for one planned fault (times are unix times)."""

    index: int
    kind: str
    target: str
    params: dict[str, Any]
    planned_at: float
    started: float | None = None
    ended: float | None = None
    old_pid: int | None = None
    ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    moved_on: float | None = None  # when the run went on to the next fault
    skipped: str | None = None  # not available on an attached stack (not part of the verdict)
    # what the fault measured while it ran: reconnect attempts per consumer, refused pushes...
    counts: dict[str, int] = field(default_factory=dict)

    def label(self) -> str:
        return f"#{self.index + 1} {self.kind}" + (f" {self.target}" if self.target else "")


@dataclass
class Evidence:
    """What the processes did, from the records and the logs, for judging faults."""

    consumers: list[str]
    disconnects: list[float] = field(default_factory=list)
    exits: list[ProcessEvent] = field(default_factory=list)
    watchdog_restarts: list[tuple[float, str, str]] = field(default_factory=list)
    handled: dict[str, tuple[array, array]] = field(default_factory=dict)
    dead_at: dict[int, float] = field(default_factory=dict)
    out_of_memory: list[float] = field(default_factory=list)  # `redis.out_of_memory` lines
    # per consumer: (time, attempts) of each `redis.reconnected` line
    reconnects: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    done_at: dict[int, float] = field(default_factory=dict)  # first handling of watched ids

    def first_disconnect(self, after: float) -> float | None:
        i = bisect.bisect_left(self.disconnects, after)
        return self.disconnects[i] if i < len(self.disconnects) else None

    def disconnects_between(self, a: float, b: float) -> int:
        return bisect.bisect_right(self.disconnects, b) - bisect.bisect_left(self.disconnects, a)

    def first_handled(self, worker: str, after: float, not_pid: int | None = None) -> float | None:
        times, pids = self.handled.get(worker, (array("d"), array("q")))
        i = bisect.bisect_right(times, after)
        while i < len(times):
            if pids[i] != not_pid:
                return float(times[i])
            i += 1
        return None

    def first_out_of_memory(self, after: float) -> float | None:
        i = bisect.bisect_left(self.out_of_memory, after)
        return self.out_of_memory[i] if i < len(self.out_of_memory) else None

    def all_handled(self, after: float) -> float | None:
        """When every consumer had handled a task after `after` (None if one never did)."""
        firsts = [self.first_handled(w, after) for w in self.consumers]
        if not firsts or any(f is None for f in firsts):
            return None
        return max(f for f in firsts if f is not None)


def collect_handled(
    records: Iterable[Record], consumers: Sequence[str]
) -> dict[str, tuple[array, array]]:
    """Per consumer: sorted handling times and the pid of each (task records only)."""
    rows: dict[str, list[tuple[float, int]]] = {w: [] for w in consumers}
    for r in records:
        if r.outcome != "msg" and r.worker in rows:
            rows[r.worker].append((r.handled, r.pid))
    out: dict[str, tuple[array, array]] = {}
    for worker, items in rows.items():
        items.sort()
        out[worker] = (array("d", [t for t, _ in items]), array("q", [p for _, p in items]))
    return out


def link_events(ev: Evidence, logs: dict[str, list[Path]], origin: float) -> None:
    """Disconnects, reconnects (with their attempt counts) and OOM lines of each consumer."""
    names = ["redis.disconnected", "redis.reconnected", "redis.out_of_memory"]
    for worker, paths in logs.items():
        for t, doc in parse_json_events(read_lines(paths), names):
            if t < origin:
                continue
            if doc["event"] == "redis.disconnected":
                ev.disconnects.append(t)
            elif doc["event"] == "redis.reconnected":
                attempts = doc.get("attempts")
                n = attempts if isinstance(attempts, int) else 0
                ev.reconnects.setdefault(worker, []).append((t, n))
            else:
                ev.out_of_memory.append(t)
    ev.disconnects.sort()
    ev.out_of_memory.sort()


def first_done(records: Iterable[Record], ids: set[int]) -> dict[int, float]:
    """When each of `ids` was first handled successfully (tasks never done are absent)."""
    wanted = {str(i) for i in ids}
    out: dict[int, float] = {}
    for r in records:
        if r.outcome == "ok" and r.id in wanted:
            task_id = int(r.id)
            out[task_id] = min(out.get(task_id, math.inf), r.handled)
    return out


def evaluate_fault(run: FaultRun, spec: FaultSpec, ev: Evidence, origin: float) -> dict[str, Any]:
    """Detection and recovery of one fault against its bounds; `ok` is the verdict."""
    result: dict[str, Any] = {
        "index": run.index + 1,
        "kind": run.kind,
        "target": run.target,
        "simulates": SIMULATES[run.kind],
        "params": run.params,
        "started_s": None if run.started is None else round(run.started - origin, 2),
        "held_s": None,
        "detected_after_s": None,
        "recovered_after_s": None,
        "detect_bound_s": spec.detect_bound,
        "recover_bound_s": spec.recover_bound,
        "ok": False,
        "why": "",
        "notes": list(run.notes),
    }
    if run.started is None:
        result["why"] = run.error or "did not run"
        return result
    start = run.started
    end = run.ended if run.ended is not None else start
    detected: float | None = None
    recovered: float | None = None
    extra_why: list[str] = []  # what else fails this fault (long outage, OOM)
    kind = run.kind
    if kind == LONG_OUTAGE:
        detected = ev.first_disconnect(start)
        recovered, problems = judge_long_outage(run, ev, end, spec.recover_bound)
        result["notes"] += [p.removeprefix("note: ") for p in problems if p.startswith("note: ")]
        extra_why = [p for p in problems if not p.startswith("note: ")]
    elif kind == OOM:  # consumers may notice during the last chunks of the fill
        first = ev.first_out_of_memory(start - 1.0)
        detected = None if first is None else max(first, start)
        recovered = ev.all_handled(end)
        notes, extra_why = judge_oom_drain(run, ev, start, end)
        result["notes"] += notes
    elif kind in LINK_KINDS:
        if spec.detect_bound is not None:
            detected = ev.first_disconnect(start)
        recovered = ev.all_handled(end)
        if kind == LATENCY:
            n = ev.disconnects_between(start, end)
            result["notes"].append(
                f"{n} consumer disconnect(s) while the link was slow"
                if n
                else "no consumer lost its connection (round trips stayed below the deadlines)"
            )
    elif kind == CONSUMER_KILL:
        detected = next(
            (
                e.t
                for e in ev.exits
                if e.event == "exited" and e.name == run.target and e.t >= start - 1.0
            ),
            None,
        )
        recovered = ev.first_handled(run.target, start, not_pid=run.old_pid)
    elif kind == CONSUMER_STOP:
        detected = next(
            (
                t
                for t, process, _ in ev.watchdog_restarts
                if process.split(":")[-1] == run.target and t >= start
            ),
            None,
        )
        if detected is not None:  # the fault ends when the watchdog restarts the process
            end = detected
        recovered = ev.first_handled(run.target, end, not_pid=run.old_pid)
    elif kind == FAIL_BURST:
        times = [ev.dead_at.get(i) for i in run.ids]
        if run.ids and all(t is not None for t in times):
            recovered = max(t for t in times if t is not None)
        elif run.ids:
            missing = sum(1 for t in times if t is None)
            result["notes"].append(f"{missing} of {len(run.ids)} failing tasks not dead-lettered")
    elif kind == HANG:
        detected = next(
            (
                e.t
                for e in ev.exits
                if e.event == "exited" and "exit status 70" in e.detail and e.t >= start
            ),
            None,
        )
        if run.ids:
            recovered = ev.dead_at.get(run.ids[0])
    result["held_s"] = round(end - start, 2)
    why: list[str] = list(extra_why)
    if detected is not None:
        result["detected_after_s"] = round(detected - start, 2)
    if spec.detect_bound is not None:
        if detected is None:
            why.append("never detected")
        elif detected - start > spec.detect_bound:
            why.append(f"detected after {detected - start:.1f}s > bound {spec.detect_bound:g}s")
    if recovered is not None:
        result["recovered_after_s"] = round(max(0.0, recovered - end), 2)
    if recovered is None:
        why.append("never recovered")
    elif recovered - end > spec.recover_bound:
        why.append(f"recovered after {recovered - end:.1f}s > bound {spec.recover_bound:g}s")
    if run.error:
        why.append(run.error)
    result["ok"] = not why
    result["why"] = "; ".join(why) if why else "detected and recovered within bounds"
    result["recovered_at"] = recovered
    return result


def judge_long_outage(
    run: FaultRun, ev: Evidence, end: float, bound: float
) -> tuple[float | None, list[str]]:
    """Recovery of a long outage and what else fails it ("note: ..." items are notes only).

    Recovered once every consumer logged `redis.reconnected` and handled a task after Redis
    came back. Fails when a consumer or the subscriber exited meanwhile (Redis unreachable is
    never an exit), or when a consumer made too few attempts to pass the old overflow.
    """
    problems: list[str] = []
    start = run.started or end
    handled = ev.all_handled(end)
    back: list[float] = []
    attempts: dict[str, int] = {}
    for worker in ev.consumers:
        seen = [(t, n) for t, n in ev.reconnects.get(worker, []) if t >= start]
        if not seen:
            problems.append(f"{worker} never logged redis.reconnected")
            continue
        back.append(seen[0][0])
        attempts[worker] = max(seen[0][1], run.counts.get(worker, 0))
    complete = handled is not None and len(back) == len(ev.consumers)
    recovered = max([handled, *back]) if complete and handled is not None else None
    until = (recovered + 1.0) if recovered is not None else end + bound
    names = {*ev.consumers, "subscriber"}
    for e in ev.exits:
        if e.event == "exited" and e.name in names and start - 1.0 <= e.t <= until:
            problems.append(f"{e.name} exited during the outage ({e.detail})")
    if attempts:
        shown = ", ".join(f"{w} {n}" for w, n in sorted(attempts.items()))
        problems.append(f"note: reconnect attempts before redis.reconnected: {shown}")
    few = {w: n for w, n in attempts.items() if n < LONG_OUTAGE_MIN_ATTEMPTS}
    if few:
        problems.append(
            "too short to test what it simulates: "
            + ", ".join(f"{w} made {n}" for w, n in sorted(few.items()))
            + f" reconnect attempts (< {LONG_OUTAGE_MIN_ATTEMPTS})"
        )
    return recovered, problems


def judge_oom_drain(
    run: FaultRun, ev: Evidence, start: float, end: float
) -> tuple[list[str], list[str]]:
    """(notes, failures) of the consumers' draining while Redis was full.

    The backlog pushed just before the fill (`run.ids`) that was still there once Redis
    refused writes must all be handled before the filler is removed: consumers that stop
    consuming under OOM never free the memory that would end it.
    """
    notes = [f"{k.replace('_', ' ')}: {v}" for k, v in sorted(run.counts.items()) if k != "backlog"]
    if not run.ids:
        return notes, ["no backlog was pushed before the fill"]
    waiting = [i for i in run.ids if ev.done_at.get(i, math.inf) > start]
    drained = sum(1 for i in waiting if ev.done_at.get(i, math.inf) <= end)
    notes.append(
        f"{len(waiting)} of {len(run.ids)} backlog task(s) were still queued when Redis became "
        f"full; {drained} handled while it was full"
    )
    if not waiting:
        return notes, ["the backlog was gone before Redis was full: nothing drained under OOM"]
    if drained < len(waiting):
        return notes, [
            f"consumers did not drain a full Redis: {len(waiting) - drained} of {len(waiting)} "
            "backlog task(s) still queued when the filler was removed"
        ]
    return notes, []


def explain_exits(
    exits: Sequence[ProcessEvent],
    runs: Sequence[FaultRun],
    results: dict[int, dict[str, Any]],
    specs: dict[str, FaultSpec],
    until: float,
) -> list[dict[str, Any]]:
    """Every process exit before `until` (teardown), with the fault that explains it, if any.

    A fault that is meant to end a process explains it first (kill -9, the outside watchdog,
    a hang's exit 70); an exit while the link or Redis was faulty is "collateral".
    """

    def specific(e: ProcessEvent, run: FaultRun) -> str | None:
        start = run.started or 0.0
        end = run.ended if run.ended is not None else start
        recovered = results.get(run.index, {}).get("recovered_at") or (
            end + specs[run.kind].recover_bound
        )
        if run.kind == CONSUMER_KILL and e.name == run.target and "SIGKILL" in e.detail:
            if start - 1.0 <= e.t <= start + 10.0:
                return f"{run.label()}: kill -9 by the soak"
        elif run.kind == CONSUMER_STOP and e.name == run.target:
            if start <= e.t <= end + 15.0 and ("SIGABRT" in e.detail or "SIGKILL" in e.detail):
                return f"{run.label()}: restarted by the outside watchdog"
        elif run.kind == HANG and "exit status 70" in e.detail and start <= e.t <= recovered + 5:
            return f"{run.label()}: stall watchdog (--task-timeout)"
        return None

    def during(e: ProcessEvent, run: FaultRun) -> str | None:
        start = run.started or 0.0
        end = run.ended if run.ended is not None else start
        if run.kind in LINK_KINDS and start - 1.0 <= e.t <= end + specs[run.kind].recover_bound:
            return f"during {run.label()}"
        return None

    started = [r for r in runs if r.started is not None]
    rows = []
    for e in exits:
        if e.event != "exited" or e.t >= until:
            continue
        cause = next((c for r in started if (c := specific(e, r))), None)
        collateral = False
        if cause is None:
            cause = next((c for r in started if (c := during(e, r))), None)
            collateral = cause is not None
        rows.append(
            {
                "t": e.t,
                "process": e.name,
                "why": e.detail,
                "explained_by": cause,
                "collateral": collateral,
            }
        )
    return rows


# ---------------------------------------------------------------------------- processes
def _port_block(count: int) -> int:
    try:
        return free_port_block(count)
    except OSError as exc:
        raise StackError(str(exc)) from None


def _parent_death_hook() -> Callable[[], None] | None:
    """preexec_fn asking Linux to SIGTERM the child if the soak dies (even by kill -9)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now, not in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


_DIE_WITH_PARENT = _parent_death_hook() if sys.platform.startswith("linux") else None


def spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only the soak, which stops it in order)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 - prepared before any thread forks
        )


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until `predicate` is truthy (exceptions count as false); None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def end_process(
    proc: subprocess.Popen[bytes] | None,
    grace: float,
    name: str,
    hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SIGCONT, SIGTERM, wait up to `grace` s (less once `hurry()`), then SIGKILL: bounded."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
    deadline = time.monotonic() + max(0.1, grace)
    while proc.poll() is None and time.monotonic() < deadline and not hurry():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.2)
    if proc.poll() is None:
        print(f"soak: {name} (pid {proc.pid}) still running; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def proc_status(pid: int) -> tuple[float, int, str] | None:
    """(RSS in MB, open fds, state letter) of a live process from /proc; None when gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            text = handle.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss_kb, state = 0.0, "?"
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = float(line.split()[1])
        elif line.startswith("State:"):
            state = line.split()[1]
    return rss_kb / 1024.0, fds, state


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the unique run folder): leftovers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as handle:
            if text.encode() in handle.read():
                found.append(int(entry))
    return found


class RedisServer:
    """The redis-server under test: AOF with appendfsync always, so kill -9 loses nothing."""

    def __init__(self, port: int, data_dir: Path, log: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self, timeout: float = 30.0) -> float:
        """Start (again, from the AOF) and return when it answers PING; raises StackError."""
        binary = shutil.which("redis-server")
        if not binary:
            raise StackError("redis-server not found on PATH (apt-get install redis-server)")
        self.proc = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ],
            self.log,
        )
        if not wait_for(self.ping, timeout, 0.05):
            raise StackError(
                f"redis-server on port {self.port} did not answer within "
                f"{timeout:g}s; see {self.log}"
            )
        return time.time()

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def send(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        end_process(self.proc, 15.0, "redis-server", hurry)


class ProxyControl:
    """The chaos proxy's HTTP control API (daemon/chaos_proxy.py), with deadlines."""

    def __init__(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/mode", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def set_mode(self, mode: str, **params: float) -> dict[str, Any]:
        body = json.dumps({"mode": mode, **params}).encode()
        req = urllib.request.Request(f"{self.base}/mode", data=body, method="PUT")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"proxy refused mode {mode}: {exc.read()[:200]!r}") from None


class ProxyProcess:
    """scripts/chaos_proxy.py as a child process: its own GIL, its own RSS in the report."""

    def __init__(self, target_port: int, log: Path) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.control_port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.control = ProxyControl("127.0.0.1", self.control_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = spawn(
            [
                sys.executable,
                "-m",
                "daemon.chaos_proxy",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--target",
                f"127.0.0.1:{self.target_port}",
                "--control",
                f"127.0.0.1:{self.control_port}",
                "--connect-timeout",
                "1",
            ],
            self.log,
            env=env,
            cwd=ROOT,
        )
        if not wait_for(lambda: self.control.state()["mode"] == "pass", 15, 0.1):
            raise StackError(f"chaos proxy did not start within 15s; see {self.log}")

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        end_process(self.proc, 10.0, "chaos proxy", hurry)


class _RpcConnection(HTTPConnection):
    """HTTP over supervisord's unix socket, with a deadline on connect and every read."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def supervisor_rpc(serverurl: str, timeout: float = 10.0) -> Any:
    """supervisord's XML-RPC `supervisor` namespace; every call has a deadline."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl)
    if serverurl.startswith("unix://"):
        path = serverurl[len("unix://") :]
        transport._get_connection = lambda: _RpcConnection(path, timeout)
    else:
        parsed = urllib.parse.urlsplit(serverurl)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        transport._get_connection = lambda: HTTPConnection(host, port, timeout=timeout)
    return ServerProxy("http://127.0.0.1", transport=transport).supervisor


# ---------------------------------------------------------------------------- the supervisord conf
def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            out.append((header.group(1).strip(), [line]))
        else:
            out[-1][1].append(line)
    return out


def _must_sub(text: str, pattern: str, new: str, what: str) -> str:
    result, count = re.subn(pattern, new, text, count=1, flags=re.MULTILINE)
    if not count:
        raise StackError(
            f"conf/supervisord.conf: cannot find {what} (/{pattern}/); the soak "
            "builds its stack from that file and needs it"
        )
    return result


def edit_section(text: str, name: str, edits: Sequence[tuple[str, str, str]]) -> str:
    """Apply (pattern, replacement, what) regex edits, each once, inside section [name]."""
    parts = _sections(text)
    for i, (section, lines) in enumerate(parts):
        if section == name:
            body = "".join(lines)
            for pattern, new, what in edits:
                body = _must_sub(body, pattern, new, f"{what} in [{name}]")
            parts[i] = (section, [body])
            return "".join("".join(lines) for _, lines in parts)
    raise StackError(f"conf/supervisord.conf: no [{name}] section; the soak needs it")


def build_supervisord_conf(
    template: str,
    *,
    proxy_url: str,
    redis_port: int,
    metrics_prefix: int,
    subscriber_metrics: int,
    watchdog_metrics: int,
    web_port: int,
    handler: str,
    consumers: int,
    grace: float,
) -> str:
    """The shipped conf, on free ports, with the consumers and subscriber behind the proxy.

    Redis is run by the soak itself (to kill -9 and restart it from the AOF), so [program:redis]
    is disabled; the web producer is not started (the soak has its own producer).
    """
    text = (
        "; generated by daemon/soak.py from conf/supervisord.conf: the ports in the comments\n"
        "; below are the shipped ones, the settings use free ones\n" + template
    )
    text = _must_sub(
        text,
        r'TASKD_REDIS_URL="redis://127\.0\.0\.1:16379/0"',
        f'TASKD_REDIS_URL="{proxy_url}"',
        "the TASKD_REDIS_URL of [supervisord]",
    )
    off = [(r"^autostart=true", "autostart=false", "autostart")]
    text = edit_section(
        text,
        "program:redis",
        [
            *off,
            (r"^autorestart=true", "autorestart=false", "autorestart"),
            (r"--port 16379", f"--port {redis_port}", "--port"),
        ],
    )
    text = edit_section(
        text,
        "program:consumer",
        [
            (r"--handler \S+", f"--handler {handler}", "--handler"),
            (r"^numprocs=\d+", f"numprocs={consumers}", "numprocs"),
            (
                r"--metrics-port 186%\(process_num\)02d",
                f"--metrics-port {metrics_prefix}%(process_num)02d",
                "--metrics-port",
            ),
        ],
    )
    text = edit_section(
        text,
        "program:subscriber",
        [
            (r"--handler \S+", f"--handler {SUBSCRIBER_HANDLER}", "--handler"),
            (r"--metrics-port \d+", f"--metrics-port {subscriber_metrics}", "--metrics-port"),
        ],
    )
    text = edit_section(
        text,
        "program:web",
        [*off, (r"127\.0\.0\.1:8000", f"127.0.0.1:{web_port}", "--bind")],
    )
    return edit_section(
        text,
        "eventlistener:watchdog",
        [
            (r"--grace \S+", f"--grace {grace:g}", "--grace"),
            (r"--metrics-port \d+", f"--metrics-port {watchdog_metrics}", "--metrics-port"),
        ],
    )


def venv_bin() -> Path:
    """The bin folder with supervisord and taskd: this interpreter's venv, else .venv."""
    here = Path(sys.prefix) / "bin"
    return here if (here / "supervisord").exists() else ROOT / ".venv" / "bin"


class Stack:
    """What a soak run needs from a stack, owned or attached."""

    serverurl: str
    consumers: list[str]
    records_dir: Path
    redis_url: str  # direct, for the producer and the checks (never through the proxy)
    proxy: ProxyControl | None = None
    capabilities: frozenset[str] = frozenset()
    missing: dict[str, str]

    def rpc(self) -> Any:
        return supervisor_rpc(self.serverurl)

    def infos(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.rpc().getAllProcessInfo()}

    def pid_of(self, name: str) -> int | None:
        info = self.infos().get(name)
        if not info or info.get("statename") != "RUNNING":
            return None
        return int(info["pid"]) or None

    def start(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def redis_kill_restart(self) -> float:
        raise NotImplementedError

    def redis_signal(self, sig: int) -> None:
        raise NotImplementedError

    def redis_shut_down(self) -> None:
        """Stop Redis for a long outage (clean shutdown: the AOF keeps every write)."""
        raise NotImplementedError

    def redis_start(self) -> float:
        """Start Redis again after a long outage; returns when it answers PING."""
        raise NotImplementedError

    def consumer_metrics(self) -> dict[str, str]:
        """Consumer name -> its /metrics URL (empty when not known)."""
        return {}

    def extra_pids(self) -> dict[str, int]:
        return {}

    def log_paths(self) -> dict[str, list[Path]]:
        raise NotImplementedError

    def finish_logs(self) -> None:
        """Make sure the run folder holds the logs (copies them when attached)."""

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop what the soak started; waits are cut short once `hurry()` (a second signal)."""
        raise NotImplementedError


def wait_ready(
    stack: Stack, queue: str, channel: str, timeout: float, stop: threading.Event | None = None
) -> None:
    """Every consumer RUNNING with a live heartbeat in Redis, the subscriber subscribed."""
    import redis

    from daemon.keys import QueueKeys

    client: Any = redis.Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=2)
    qk = QueueKeys(queue)

    def ready() -> bool:
        infos = stack.infos()
        names = [*stack.consumers, *(n for n in ("subscriber", "watchdog") if n in infos)]
        if any(infos.get(n, {}).get("statename") != "RUNNING" for n in names):
            return False
        workers = [w.decode() for w in client.zrange(qk.workers, 0, -1)]
        alive = [w for w in workers if client.exists(qk.alive(w))]
        if not all(any(w.endswith(f":{c}") for w in alive) for c in stack.consumers):
            return False
        if "subscriber" in infos:
            numsub = client.pubsub_numsub(channel)
            return bool(numsub and numsub[0][1] >= 1)
        return True

    try:
        if not wait_for(lambda: (stop is not None and stop.is_set()) or ready(), timeout, 0.25):
            states = {}
            with contextlib.suppress(Exception):
                states = {n: i.get("statename") for n, i in stack.infos().items()}
            raise StackError(
                f"stack not ready within {timeout:g}s (every consumer RUNNING with a live "
                f"heartbeat, subscriber subscribed); states: {states}; see the logs in var/log"
            )
    finally:
        client.close()


def redis_config_allowed(url: str) -> bool:
    """Whether this Redis lets us read (and so, presumably, set) maxmemory."""
    import redis

    client: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.config_get("maxmemory"))
    except redis.RedisError:
        return False
    finally:
        client.close()


class OwnedStack(Stack):
    """redis-server + chaos proxy + supervisord (from conf/supervisord.conf) in the run folder."""

    def __init__(self, run_dir: Path, consumers: int, handler: str, timings: Timings) -> None:
        self.run_dir = run_dir
        self.timings = timings
        self.handler = handler
        self.consumers = [f"consumer_{n:02d}" for n in range(consumers)]
        self.records_dir = run_dir / "records"
        self.log_dir = run_dir / "var" / "log"
        self.redis = RedisServer(free_port(), run_dir / "var" / "redis", self.log_dir / "redis.log")
        self.redis_url = self.redis.url
        self.proxy_proc: ProxyProcess | None = None
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.sock = run_dir / "var" / "run" / "supervisor.sock"
        self.sock_dir: Path | None = None
        if len(str(self.sock)) > MAX_SOCKET_PATH:  # AF_UNIX paths are short (108 bytes)
            import tempfile

            self.sock_dir = Path(tempfile.mkdtemp(prefix="taskd-soak-"))
            self.sock = self.sock_dir / "supervisor.sock"
        self.serverurl = f"unix://{self.sock}"
        self.conf = run_dir / "conf" / "supervisord.conf"
        self.capabilities = frozenset(KINDS)
        self.missing = {}
        self.metrics_prefix: int | None = None

    def start(self, timeout: float = 60.0) -> None:
        for sub in ("conf", "var/run", "var/log", "var/redis", "records"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        bin_dir = venv_bin()
        link = self.run_dir / ".venv"
        if not link.exists():
            link.symlink_to(bin_dir.parent)
        for tool in ("supervisord", "taskd"):
            if not (bin_dir / tool).exists():
                raise StackError(f"{bin_dir / tool} not found: run `make setup` first")
        self.redis.start()
        self.proxy_proc = ProxyProcess(self.redis.port, self.log_dir / "chaos_proxy.log")
        self.proxy_proc.start()
        self.proxy = self.proxy_proc.control
        self.metrics_prefix = _port_block(len(self.consumers))
        text = build_supervisord_conf(
            (ROOT / "conf" / "supervisord.conf").read_text(),
            proxy_url=self.proxy_proc.url,
            redis_port=self.redis.port,
            metrics_prefix=self.metrics_prefix,
            subscriber_metrics=free_port(),
            watchdog_metrics=free_port(),
            web_port=free_port(),
            handler=self.handler,
            consumers=len(self.consumers),
            grace=self.timings.watchdog_grace,
        )
        if self.sock_dir is not None:
            text = edit_section(
                text, "unix_http_server", [(r"^file=.*$", f"file={self.sock}", "file")]
            )
            text = edit_section(
                text, "supervisorctl", [(r"^serverurl=.*$", self.serverurl, "serverurl")]
            )
        self.conf.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        env.update(self.timings.env())
        env["PYTHONPATH"] = str(ROOT)
        env["SOAK_RECORDS_DIR"] = str(self.records_dir)
        self.supervisord = spawn(
            [str(bin_dir / "supervisord"), "-n", "-c", str(self.conf)],
            self.log_dir / "supervisord.stdout.log",
            env=env,
            cwd=self.run_dir,
        )
        sock = self.sock
        if not wait_for(lambda: sock.exists() and self.rpc().getState(), 20, 0.1):
            raise StackError(f"supervisord did not start; see {self.log_dir}")

    def redis_kill_restart(self) -> float:
        self.redis.kill9()
        return self.redis.start()

    def redis_signal(self, sig: int) -> None:
        self.redis.send(sig)

    def redis_shut_down(self) -> None:
        self.redis.stop()

    def redis_start(self) -> float:
        return self.redis.start()

    def consumer_metrics(self) -> dict[str, str]:
        if self.metrics_prefix is None:
            return {}
        return {
            name: f"http://127.0.0.1:{self.metrics_prefix * 100 + n}/metrics"
            for n, name in enumerate(self.consumers)
        }

    def extra_pids(self) -> dict[str, int]:
        pids = {}
        if self.redis.pid:
            pids["redis-server"] = self.redis.pid
        if self.proxy_proc and self.proxy_proc.proc and self.proxy_proc.proc.poll() is None:
            pids["chaos-proxy"] = self.proxy_proc.proc.pid
        if self.supervisord and self.supervisord.poll() is None:
            pids["supervisord"] = self.supervisord.pid
        return pids

    def log_paths(self) -> dict[str, list[Path]]:
        logs = {p.name.split(".log")[0]: [p] for p in sorted(self.log_dir.glob("*.log"))}
        for name in list(logs):
            logs[name] += sorted(self.log_dir.glob(f"{name}.log.*"))
        return logs

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """supervisord (consumers drain), then the proxy, then Redis; SIGKILL what lingers."""
        child_pids: list[int] = []
        with contextlib.suppress(Exception):
            child_pids = [int(i["pid"]) for i in self.infos().values() if i.get("pid")]
        for pid in child_pids:  # a consumer left frozen would hold the shutdown
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        end_process(self.supervisord, 60.0, "supervisord", hurry)
        if self.proxy_proc:
            self.proxy_proc.stop(hurry)
        self.redis.stop(hurry)
        # children of a supervisord that had to be killed: found by the run folder in their
        # command line (unique to this run), never by a broad name
        for pid in pids_mentioning(str(self.run_dir)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)


class AttachedStack(Stack):
    """A stack someone else runs (`--attach`): the soak produces, injects faults and watches.

    Expects: supervisord reachable through the [supervisorctl] serverurl of `--supervisor-conf`,
    a `consumer` group whose processes run `--handler daemon.soak_handler:handle` with
    SOAK_RECORDS_DIR=<--records-dir> (and the soak timings, see docs/soak.md), `--redis-url`
    the Redis they consume. Proxy faults need `--proxy-control`; Redis faults need a
    [program:redis] in that supervisord (killed by pid, restarted by supervisord).
    """

    def __init__(
        self,
        conf: Path,
        redis_url: str,
        records_dir: Path,
        proxy_control: str | None,
        run_dir: Path,
    ) -> None:
        import configparser

        parser = configparser.RawConfigParser()
        try:
            parser.read_string(conf.read_text())
        except (OSError, configparser.Error) as exc:
            raise StackError(f"--supervisor-conf {conf}: cannot read ({exc})") from None
        here = str(conf.resolve().parent)
        url = parser.get("supervisorctl", "serverurl", fallback="")
        if not url and parser.has_option("unix_http_server", "file"):
            url = "unix://" + parser.get("unix_http_server", "file")
        if not url:
            raise StackError(f"--supervisor-conf {conf}: no [supervisorctl] serverurl")
        self.serverurl = url.replace("%(here)s", here)
        self.redis_url = redis_url
        self.records_dir = records_dir
        self.run_dir = run_dir
        self.log_dir = run_dir / "var" / "log"
        self.proxy = None
        if proxy_control:
            host, _, port = proxy_control.rpartition(":")
            self.proxy = ProxyControl(host or "127.0.0.1", int(port))
        self.consumers = []
        self.missing = {}
        self._logs: dict[str, list[Path]] = {}
        self._offsets: dict[Path, int] = {}
        self._copied: dict[str, list[Path]] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            infos = self.infos()
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot attach"
            raise StackError(f"cannot reach supervisord at {self.serverurl}: {exc}") from None
        self.consumers = sorted(n for n, i in infos.items() if i.get("group") == "consumer")
        if not self.consumers:
            raise StackError("the attached supervisord runs no [program:consumer] processes")
        caps = set(CONSUMER_KINDS | TASK_KINDS)
        if self.proxy is not None:
            try:
                self.proxy.state()
            except OSError as exc:
                raise StackError(f"--proxy-control: no chaos proxy answers ({exc})") from None
            caps |= PROXY_KINDS
        else:
            self.missing.update({k: "no --proxy-control given" for k in PROXY_KINDS})
        if infos.get("redis", {}).get("statename") == "RUNNING":
            caps |= REDIS_KINDS
        else:
            self.missing.update(
                {k: "the attached supervisord runs no [program:redis]" for k in REDIS_KINDS}
            )
        self.missing[LONG_OUTAGE] = (
            "needs the soak's own stack (its consumers run with a tiny reconnect backoff)"
        )
        if redis_config_allowed(self.redis_url):
            caps.add(OOM)
        else:
            self.missing[OOM] = "CONFIG GET/SET maxmemory is not allowed on --redis-url"
        self.capabilities = frozenset(caps)
        for name, info in infos.items():
            paths = [
                Path(p)
                for p in (info.get("stdout_logfile"), info.get("stderr_logfile"))
                if p and p != "/dev/null"
            ]
            self._logs[name] = paths
            for path in paths:
                with contextlib.suppress(OSError):
                    self._offsets[path] = path.stat().st_size
        self._main_log_start = len(self.rpc().readLog(0, 0))

    def redis_kill_restart(self) -> float:
        pid = self.pid_of("redis")
        if pid is None:
            raise RuntimeError("the attached redis is not RUNNING")
        os.kill(pid, signal.SIGKILL)
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)

        def back() -> bool:
            new = self.pid_of("redis")
            return new is not None and new != pid and bool(client.ping())

        try:
            if not wait_for(back, 60, 0.1):
                raise RuntimeError("supervisord did not bring redis back within 60s")
        finally:
            client.close()
        return time.time()

    def redis_signal(self, sig: int) -> None:
        pid = self.pid_of("redis")
        if pid is None:
            raise RuntimeError("the attached redis is not RUNNING")
        os.kill(pid, sig)

    def extra_pids(self) -> dict[str, int]:
        with contextlib.suppress(Exception):
            return {"supervisord": int(self.rpc().getPID())}
        return {}

    def log_paths(self) -> dict[str, list[Path]]:
        return self._copied if self._copied is not None else dict(self._logs)

    def finish_logs(self) -> None:
        """Copy what the logs gained during the run into the run folder."""
        copied: dict[str, list[Path]] = {}
        for name, paths in self._logs.items():
            for path in paths:
                dest = self.log_dir / path.name
                with contextlib.suppress(OSError), open(path, "rb") as src:
                    src.seek(self._offsets.get(path, 0))
                    dest.write_bytes(src.read())
                    copied.setdefault(name, []).append(dest)
        with contextlib.suppress(Exception):
            text = self.rpc().readLog(0, 0)[self._main_log_start :]
            (self.log_dir / "supervisord.log").write_text(text)
            copied["supervisord"] = [self.log_dir / "supervisord.log"]
        self._copied = copied

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Nothing to stop: the stack is someone else's (faults were undone by the run)."""


# ---------------------------------------------------------------------------- live threads
@dataclass
class Injection:
    """Tasks of a given kind the fault schedule asked the producer to push."""

    kind: str
    count: int
    ids: list[int] = field(default_factory=list)
    pushed: threading.Event = field(default_factory=threading.Event)
    pushed_at: float = 0.0


class Producer(threading.Thread):
    """Pushes tasks straight into Redis at a steady rate, and pub/sub messages at a low one.

    A task counts as produced once LPUSH returned; a failed push is retried with the same
    bodies (a reply lost after the write shows up as a duplicate, never as a loss). A push
    Redis answered with an error (OOM: maxmemory reached) was refused, so it stored nothing:
    its ordinary tasks are dropped as never produced (counted in `push_refused`, like a web
    request answered 503) and the producer keeps its pace; injected tasks are retried. After
    an outage the producer does not burst to catch up more than one second of tasks.
    """

    TICK = 0.02

    def __init__(
        self,
        redis_url: str,
        queue: str,
        channel: str,
        rate: float,
        pubsub_rate: float,
        produced_path: Path,
        base: int,
    ) -> None:
        super().__init__(name="soak-producer", daemon=True)
        from daemon.config import Settings
        from daemon.connection import make_client

        settings = Settings(
            redis_url=redis_url, block_timeout=1.0, socket_timeout=2.0, connect_timeout=1.0
        ).with_derived()
        self.client = make_client(settings, client_name="taskd-soak-producer")
        self.queue = queue
        self.channel = channel
        self.rate = rate
        self.pubsub_rate = pubsub_rate
        self.produced_path = produced_path
        self.base = base
        self.produced = ProducedSet(base)
        self.lock = threading.Lock()
        self.producing = threading.Event()
        self.producing.set()
        self._halt = threading.Event()
        self._injections: list[Injection] = []
        self._pending: list[tuple[int, float, str, bytes]] = []
        self._pending_injections: list[Injection] = []
        self.next_n = 1
        self.next_p = 1
        self.push_errors = 0
        self.push_refused = 0  # tasks whose push Redis refused (never produced)
        self.last_error = ""
        self.skipped_seconds = 0.0
        self.published = 0
        self.published_unheard = 0
        self.publish_errors = 0

    def inject(self, kind: str, count: int) -> Injection:
        """Ask for `count` tasks of `kind` in the next push; wait on `.pushed`."""
        injection = Injection(kind, count)
        with self.lock:
            self._injections.append(injection)
        return injection

    def stop_production(self, timeout: float) -> bool:
        """Stop making tasks; True once everything made was pushed (within `timeout`)."""
        self.producing.clear()
        return bool(wait_for(lambda: not self._pending and not self._injections, timeout, 0.05))

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout)

    def _make(self, kind: str) -> tuple[int, float, str, bytes]:
        task_id = self.base + self.next_n
        self.next_n += 1
        t = time.time()
        body = json.dumps({"id": task_id, "t": round(t, 6), "kind": kind}, separators=(",", ":"))
        return task_id, t, kind, body.encode()

    def _push(self, out: TextIO) -> float | None:
        """Push what is pending, one LPUSH per batch (each stored whole or not at all).

        None once all of it is pushed (or dropped as refused), else the seconds to wait
        before retrying what is left.
        """
        from daemon.producer import BATCH, enqueue_many

        while self._pending:
            batch = self._pending[:BATCH]
            try:
                enqueue_many(self.client, self.queue, [p[3] for p in batch])
            except Exception as exc:  # noqa: BLE001 - any failure: retry the same bodies
                self.push_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return self.TICK if self._refused(exc) else 0.2
            with self.lock:
                for task_id, t, kind, _ in batch:
                    self.produced.add(task_id, t, kind)
                    out.write(f"{task_id} {t:.6f} {kind}\n")
            del self._pending[: len(batch)]
            out.flush()
        pushed_at = time.time()
        for injection in self._pending_injections:
            injection.pushed_at = pushed_at
            injection.pushed.set()
        self._pending_injections = []
        return None

    def _refused(self, exc: Exception) -> bool:
        """An error reply stored nothing: drop its ordinary tasks (not produced), keep the rest.

        True when nothing is left to retry: the next tick makes new tasks at the usual pace.
        """
        import redis

        cause = getattr(exc, "cause", exc)  # enqueue_many wraps it in PushStopped
        if not isinstance(cause, redis.ResponseError):
            return False
        injected = {i for injection in self._pending_injections for i in injection.ids}
        kept = [p for p in self._pending if p[0] in injected]
        self.push_refused += len(self._pending) - len(kept)
        self._pending = kept
        return not kept

    def run(self) -> None:
        from daemon.producer import publish

        with open(self.produced_path, "a", encoding="ascii") as out:
            started = time.monotonic()
            made = 0
            next_pub = started
            while not self._halt.is_set():
                now = time.monotonic()
                if self.producing.is_set() and not self._pending:
                    due = int((now - started) * self.rate) - made
                    if due > self.rate:  # an outage held us: resume the pace, do not burst
                        self.skipped_seconds += (due - self.rate) / self.rate
                        made += due - int(self.rate)
                        due = int(self.rate)
                    with self.lock:
                        injections, self._injections = self._injections, []
                    for injection in injections:
                        for _ in range(injection.count):
                            item = self._make(injection.kind)
                            injection.ids.append(item[0])
                            self._pending.append(item)
                    for _ in range(max(0, due)):
                        self._pending.append(self._make("ok"))
                    made += max(0, due)
                    self._pending_injections = injections
                if self._pending:
                    wait = self._push(out)
                    if wait is not None:
                        self._halt.wait(wait)
                        continue
                if self.pubsub_rate and self.producing.is_set() and now >= next_pub:
                    next_pub = max(next_pub + 1.0 / self.pubsub_rate, now - 1.0)
                    body = json.dumps({"p": self.base + self.next_p, "t": round(time.time(), 6)})
                    try:
                        heard = publish(self.client, self.channel, body)
                        self.next_p += 1
                        self.published += 1
                        self.published_unheard += heard == 0
                    except Exception:  # noqa: BLE001 - pub/sub keeps nothing: counted, not retried
                        self.publish_errors += 1
                self._halt.wait(self.TICK)
        with contextlib.suppress(Exception):
            self.client.close()


class Sampler(threading.Thread):
    """Every few seconds: RSS and open fds of every process (following restarts), and depths."""

    def __init__(self, stack: Stack, queue: str, interval: float, path: Path) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.stack = stack
        self.queue = queue
        self.interval = interval
        self.path = path
        self.latest: dict[str, Any] = {}
        self.restarts: Counter[str] = Counter()
        self._last_pid: dict[str, int] = {}
        self._halt = threading.Event()

    def stop(self, timeout: float = 15.0) -> None:
        self._halt.set()
        self.join(timeout)

    def depths(self, client: Any) -> dict[str, int] | None:
        from daemon.keys import QueueKeys

        qk = QueueKeys(self.queue)
        try:
            workers = client.zrange(qk.workers, 0, -1)
            pipe = client.pipeline(transaction=False)
            pipe.llen(qk.pending)
            pipe.zcard(qk.delayed)
            pipe.llen(qk.dead)
            for w in workers:
                pipe.llen(qk.processing(w.decode()))
            pending, delayed, dead, *held = pipe.execute()
        except Exception:  # noqa: BLE001 - Redis down or frozen: no depth this time
            return None
        return {"pending": pending, "delayed": delayed, "dead": dead, "processing": sum(held)}

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        rpc = None
        with open(self.path, "a", encoding="utf-8") as out:
            while True:
                pids: dict[str, int] = {}
                try:
                    rpc = rpc or self.stack.rpc()
                    for info in rpc.getAllProcessInfo():
                        if info.get("pid"):
                            pids[info["name"]] = int(info["pid"])
                except Exception:  # noqa: BLE001 - supervisord busy: sample what we know
                    rpc = None
                pids.update(self.stack.extra_pids())
                procs = {}
                for name, pid in pids.items():
                    status = proc_status(pid)
                    if status is not None:
                        procs[name] = [pid, round(status[0], 2), status[1], status[2]]
                    if self._last_pid.get(name, pid) != pid:
                        self.restarts[name] += 1
                    self._last_pid[name] = pid
                sample = {"t": round(time.time(), 3), "depths": self.depths(client), "procs": procs}
                self.latest = sample
                out.write(json.dumps(sample) + "\n")
                out.flush()
                if self._halt.wait(self.interval):
                    break
        client.close()


class RecordTail:
    """Reads the record files as they grow (live progress and recovery checks)."""

    def __init__(self, directory: Path, base: int, since: float = 0.0) -> None:
        self.directory = directory
        self.base = base
        self.since = since
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.done = bytearray()
        self.done_count = 0
        self.messages = 0
        self.last_by: dict[tuple[str, int], float] = {}

    def poll(self) -> None:
        for path in record_files(self.directory):
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    chunk = handle.read()
            except OSError:
                continue
            if not chunk:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            text = self.partial.pop(path, "") + chunk.decode("ascii", "replace")
            lines = text.split("\n")
            if lines[-1]:
                self.partial[path] = lines[-1]
            for line in lines[:-1]:
                record = parse_record(line)
                if record is None or record.handled < self.since:
                    continue
                self._add(record)

    def _add(self, r: Record) -> None:
        if r.outcome == "msg":
            self.messages += 1
            return
        key = (r.worker, r.pid)
        self.last_by[key] = max(self.last_by.get(key, 0.0), r.handled)
        if r.outcome != "ok":
            return
        try:
            n = int(r.id) - self.base
        except ValueError:
            return
        if n < 0:
            return
        if n >= len(self.done):
            self.done.extend(bytes(n + 1 - len(self.done) + 4096))
        if not self.done[n]:
            self.done[n] = 1
            self.done_count += 1

    def handled_after(self, worker: str, t: float, not_pid: int | None = None) -> bool:
        return any(
            w == worker and pid != not_pid and last > t for (w, pid), last in self.last_by.items()
        )

    def all_handled_after(self, workers: Sequence[str], t: float) -> bool:
        return all(self.handled_after(w, t) for w in workers)

    def is_done(self, n: int) -> bool:
        return n < len(self.done) and bool(self.done[n])


class ProgressLine:
    """One line rewritten in place on a TTY; a log line every `interval` seconds otherwise."""

    def __init__(self, stream: Any, interval: float) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = 1.0 if self.tty else interval
        self.last = 0.0
        self.width = 0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line of its own (above the progress line on a TTY)."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


# ---------------------------------------------------------------------------- the run
@dataclass
class Options:
    """Everything a run was asked to do (from the flags)."""

    duration: float
    rate: float
    faults: tuple[str, ...]
    seed: int
    run_dir: Path
    consumers: int = 2
    compressed: bool = False
    attach: bool = False
    supervisor_conf: Path | None = None
    redis_url: str | None = None
    records_dir: Path | None = None
    proxy_control: str | None = None
    handler: str = DEFAULT_HANDLER
    queue: str = DEFAULT_QUEUE
    channel: str = DEFAULT_CHANNEL
    pubsub_rate: float = 5.0
    drain_timeout: float = 120.0
    sample_interval: float = 2.0
    progress_interval: float = 10.0
    faults_explicit: bool = False  # --faults named kinds (an unavailable one fails the run)
    command: str = ""


def dead_letter_id(entry: bytes, produced: ProducedSet) -> int | None:
    """The task id of a dead letter when it is a task of this run, else None (foreign)."""
    from daemon import soak_handler
    from daemon.reliable import dead_letter_body, parse_dead_letter

    doc = parse_dead_letter(entry)
    body = dead_letter_body(doc)
    if body is None:
        return None
    try:
        task = soak_handler.parse_body(body)
    except ValueError:
        return None
    task_id = task.get("id")
    if not isinstance(task_id, int) or produced.index(str(task_id)) is None:
        return None
    return task_id


def fault_windows(
    runs: Sequence[FaultRun],
    results: dict[int, dict[str, Any]],
    backlog: Sequence[tuple[float, int]],
    rate: float,
    stop_at: float,
) -> list[Window]:
    """Each fault's window: from its start until it recovered and the backlog settled.

    Settled = the backlog (pending + delayed) is back within one second of production of its
    median in the 10 s before the fault.
    """
    times = [t for t, _ in backlog]
    windows = []
    for run in runs:
        if run.started is None:
            continue
        start = run.started
        end = run.ended if run.ended is not None else start
        recovered = results.get(run.index, {}).get("recovered_at") or end
        before = [b for t, b in backlog if start - 10.0 <= t < start]
        limit = (statistics.median(before) if before else 0) + max(rate, 20.0)
        settled = stop_at
        for i in range(bisect.bisect_left(times, max(end, recovered)), len(backlog)):
            if backlog[i][1] <= limit:
                settled = backlog[i][0]
                break
        windows.append(Window(start, min(stop_at, max(settled, end, recovered)), run.label()))
    return windows


class SoakRun:
    """One soak run: stack up, load and faults, drain, tear down, reconcile, report."""

    def __init__(self, opts: Options, stream: Any = None) -> None:
        self.opts = opts
        self.stream = stream or sys.stderr
        self.timings = soak_timings(opts.faults)
        self.specs = fault_specs(opts.compressed, self.timings)
        self.plan = plan_schedule(
            opts.faults, opts.duration, opts.seed, opts.compressed, opts.consumers, self.timings
        )
        self.progress = ProgressLine(self.stream, opts.progress_interval)
        self.stop_event = threading.Event()
        self.signal_received: int | None = None
        self.hurry = False
        self.stack: Stack | None = None
        self.producer: Producer | None = None
        self.sampler: Sampler | None = None
        self.tail: RecordTail | None = None
        self.runs: list[FaultRun] = []
        self.current: Generator[float, None, None] | None = None
        self.base = (int(time.time()) % 10**6) * 10**7  # ids unique across runs, multiple of 100
        self.origin = 0.0
        self.production_stopped = 0.0
        self.teardown_started = 0.0
        self.drained = False
        self.drain_seconds = 0.0
        self.paused_pids: set[int] = set()
        self.redis_paused = False
        self.redis_down = False  # a long outage shut Redis down: start it again when undoing
        self.oom_restore: dict[str, str] | None = None  # maxmemory settings an OOM fault changed
        self.dead_snapshot: list[bytes] = []
        self.leftovers: dict[str, list[int]] = {}
        self.error: str | None = None
        self.extended_by = 0.0
        self.git = _git_revision()

    # -- control ----------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: Any = None) -> None:
        """First SIGINT/SIGTERM: stop, clean up, report. Second: clean up without waiting."""
        if self.signal_received is not None:
            self.hurry = True
            return
        self.signal_received = signum
        self.stop_event.set()

    def say(self, text: str) -> None:
        self.progress.say(f"soak: {text}")

    # -- the whole run ----------------------------------------------------------------------
    def execute(self) -> int:
        """Run everything; returns the exit code. Every process started is stopped here."""
        opts = self.opts
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_json("plan.json", {"seed": opts.seed, "faults": [asdict(p) for p in self.plan]})
        code = EXIT_FAIL
        produced = False
        try:
            self.stack = self._make_stack()
            self.say(f"run folder {opts.run_dir}")
            self.stack.start()
            wait_ready(self.stack, opts.queue, opts.channel, 60.0, self.stop_event)
            if self.stop_event.is_set():
                raise StackError("interrupted while starting")
            produced = True
            self._produce_with_faults()
            if not self.stop_event.is_set():
                self._drain()
            self._snapshot_redis()
        except StackError as exc:
            self.error = str(exc)
            code = EXIT_UNAVAILABLE
        except Exception as exc:  # noqa: BLE001 - a soak bug still cleans up and reports
            import traceback

            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=self.stream)
        finally:
            self.progress.finish()
            self._shutdown()
        if self.error:
            print(f"soak: error: {self.error}", file=self.stream)
        if not produced:
            (opts.run_dir / "report.md").write_text(
                f"# Soak report: ERROR\n\nThe stack did not start: {self.error}\n"
            )
            return code if self.signal_received is None else 128 + self.signal_received
        state = self.state()
        state.save(opts.run_dir / "state.json")
        doc = analyze(state, self.producer.produced if self.producer else None)
        write_reports(opts.run_dir, doc)
        self.say(f"{doc['verdict']['status']}: {doc['verdict']['summary']}")
        self.say(f"report: {opts.run_dir / 'report.md'}")
        if self.signal_received is not None:
            return 128 + self.signal_received
        return EXIT_PASS if doc["verdict"]["pass"] else EXIT_FAIL

    def state(self) -> RunState:
        """Everything the analysis needs, as plain data."""
        assert self.stack is not None
        p = self.producer
        opts = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.opts).items()}
        return RunState(
            opts=opts,
            consumers=list(self.stack.consumers),
            logs={k: [str(x) for x in v] for k, v in self.stack.log_paths().items()},
            records_dir=str(self.stack.records_dir),
            base=self.base,
            origin=self.origin,
            production_stopped=self.production_stopped,
            teardown_started=self.teardown_started,
            drained=self.drained,
            drain_seconds=self.drain_seconds,
            extended_by=self.extended_by,
            signal_received=self.signal_received,
            error=self.error,
            runs=[asdict(r) for r in self.runs],
            leftovers=self.leftovers,
            producer={
                "published": p.published if p else 0,
                "published_unheard": p.published_unheard if p else 0,
                "publish_errors": p.publish_errors if p else 0,
                "push_errors": p.push_errors if p else 0,
                "push_refused": p.push_refused if p else 0,
                "skipped_seconds": p.skipped_seconds if p else 0.0,
            },
            timings=asdict(self.timings),
            git=self.git,
        )

    def _make_stack(self) -> Stack:
        opts = self.opts
        if not opts.attach:
            return OwnedStack(opts.run_dir, opts.consumers, opts.handler, self.timings)
        assert opts.supervisor_conf and opts.redis_url and opts.records_dir
        return AttachedStack(
            opts.supervisor_conf, opts.redis_url, opts.records_dir, opts.proxy_control, opts.run_dir
        )

    def _write_json(self, name: str, doc: Any) -> None:
        (self.opts.run_dir / name).write_text(json.dumps(doc, indent=2, default=str) + "\n")

    # -- production and faults --------------------------------------------------------------
    def _produce_with_faults(self) -> None:
        opts = self.opts
        stack = self.stack
        assert stack is not None
        stack.records_dir.mkdir(parents=True, exist_ok=True)
        self.tail = RecordTail(stack.records_dir, self.base, since=time.time() - 1.0)
        self.producer = Producer(
            stack.redis_url,
            opts.queue,
            opts.channel,
            opts.rate,
            opts.pubsub_rate,
            opts.run_dir / "produced.tsv",
            self.base,
        )
        self.sampler = Sampler(
            stack, opts.queue, opts.sample_interval, opts.run_dir / "samples.jsonl"
        )
        self.origin = time.time()
        self.producer.start()
        self.sampler.start()
        self.runs = [
            FaultRun(p.index, p.kind, p.target, dict(p.params), self.origin + p.at)
            for p in self.plan
        ]
        _, tail_margin = schedule_margins(opts.duration, opts.compressed)
        end = self.origin + opts.duration
        cap = self.origin + opts.duration + max(60.0, 0.5 * opts.duration)
        self.say(
            f"producing {opts.rate:g} tasks/s for {format_seconds(opts.duration)} with "
            f"{len(self.runs)} fault(s), seed {opts.seed}"
        )
        i = 0
        resume_at = 0.0
        run: FaultRun | None = None
        while not self.stop_event.is_set():
            now = time.time()
            self.tail.poll()
            if self.current is None and i < len(self.runs) and now >= self.runs[i].planned_at:
                run = self.runs[i]
                if now > cap:
                    run.error = "not run: no time left (earlier faults recovered late)"
                    i += 1
                    continue
                if run.kind not in stack.capabilities:
                    why = stack.missing.get(run.kind, "unavailable")
                    if opts.faults_explicit:
                        run.error = f"not run: {why}"
                    else:
                        run.skipped = why
                    i += 1
                    continue
                self.say(f"fault {run.label()}: {SIMULATES[run.kind]}")
                self.current = self._fault(run)
                resume_at = now
            if self.current is not None and run is not None and now >= resume_at:
                try:
                    resume_at = now + next(self.current)
                except StopIteration:
                    run.moved_on = time.time()
                    self.current = None
                    i += 1
                except Exception as exc:  # noqa: BLE001 - a failed injection fails that fault
                    run.error = f"injection failed: {type(exc).__name__}: {exc}"
                    self.say(f"fault {run.label()}: {run.error}")
                    self._close_current()
                    self._undo_faults()
                    i += 1
            faults_done = self.current is None and i >= len(self.runs)
            if faults_done and now >= end:
                break
            if faults_done and self.runs and now >= end - tail_margin:
                last = max((r.moved_on or 0.0) for r in self.runs)
                if last + tail_margin > end:  # late faults: keep a quiet tail after the last
                    self.extended_by = last + tail_margin - (self.origin + opts.duration)
                    end = last + tail_margin
            if not faults_done and now >= end and now >= cap:
                self._close_current()
                for r in self.runs[i:]:
                    r.error = r.error or "not run: no time left (earlier faults recovered late)"
                break
            self._show_progress(run if self.current is not None else None, end)
            wait = max(0.0, resume_at - now) if self.current is not None else 0.2
            self.stop_event.wait(min(0.2, wait))
        self._close_current()
        self.production_stopped = time.time()
        if not self.producer.stop_production(30.0):
            self.say("some tasks could not be pushed before the deadline (they do not count)")
        self.production_stopped = time.time()

    def _show_progress(self, run: FaultRun | None, end: float) -> None:
        assert self.producer and self.tail and self.sampler
        now = time.time()
        depths = (self.sampler.latest or {}).get("depths") or {}
        backlog = depths.get("pending", "?")
        fault = "-"
        if run is not None and run.started is not None:
            fault = f"{run.kind} {run.target}".strip() + f" +{now - run.started:.0f}s"
        elif run is not None:
            fault = f"{run.kind} (starting)"
        restarts = sum(self.sampler.restarts.values())
        self.progress.update(
            f"{format_seconds(now - self.origin)}/{format_seconds(end - self.origin)} "
            f"produced {len(self.producer.produced)} done {self.tail.done_count} "
            f"backlog {backlog} fault {fault} restarts {restarts}"
        )

    def _close_current(self) -> None:
        if self.current is not None:
            with contextlib.suppress(Exception):
                self.current.close()  # runs the fault's finally: proxy back to pass, SIGCONT
            self.current = None

    def _undo_faults(self) -> None:
        """Whatever state a fault left (interrupted, failed): link back to pass, nobody frozen."""
        stack = self.stack
        if stack is None:
            return
        if stack.proxy is not None:
            with contextlib.suppress(Exception):
                stack.proxy.set_mode("pass")
        if self.redis_paused:
            with contextlib.suppress(Exception):
                stack.redis_signal(signal.SIGCONT)
            self.redis_paused = False
        if self.redis_down:
            with contextlib.suppress(Exception):
                stack.redis_start()
            self.redis_down = False
        with contextlib.suppress(Exception):
            self._oom_undo()
        for pid in list(self.paused_pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
            self.paused_pids.discard(pid)

    # -- the faults (generators: each yields the seconds to wait before it goes on) ---------
    def _fault(self, run: FaultRun) -> Generator[float, None, None]:
        spec = self.specs[run.kind]
        action = getattr(self, "_f_" + run.kind.replace("-", "_"))
        yield from action(run)
        end = run.ended if run.ended is not None else (run.started or time.time())
        deadline = end + spec.recover_bound
        while time.time() < deadline and not self._recovered_live(run):
            yield 0.25

    def _recovered_live(self, run: FaultRun) -> bool:
        assert self.tail is not None and self.stack is not None
        end = run.ended if run.ended is not None else (run.started or 0.0)
        if run.kind in LINK_KINDS or run.kind == OOM:
            return self.tail.all_handled_after(self.stack.consumers, end)
        if run.kind in CONSUMER_KINDS:
            return self.tail.handled_after(run.target, end, not_pid=run.old_pid)
        dead = self._dead_ids_live()
        return bool(run.ids) and all(i in dead for i in run.ids)

    def _dead_ids_live(self) -> set[int]:
        import redis

        from daemon.keys import QueueKeys

        assert self.stack is not None and self.producer is not None
        client: Any = redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=2, socket_connect_timeout=1
        )
        try:
            entries = client.lrange(QueueKeys(self.opts.queue).dead, 0, -1)
        except redis.RedisError:
            return set()
        finally:
            client.close()
        with self.producer.lock:
            ids = {dead_letter_id(e, self.producer.produced) for e in entries}
        return {i for i in ids if i is not None}

    def _proxy(self) -> ProxyControl:
        assert self.stack is not None and self.stack.proxy is not None
        return self.stack.proxy

    def _f_blackhole(self, run: FaultRun) -> Generator[float, None, None]:
        self._proxy().set_mode("blackhole")
        run.started = time.time()
        try:
            yield self.plan[run.index].active
        finally:
            self._proxy().set_mode("pass")
            run.ended = time.time()

    def _f_reset(self, run: FaultRun) -> Generator[float, None, None]:
        run.started = time.time()
        state = self._proxy().set_mode("reset")
        run.ended = time.time()
        run.notes.append(f"proxy flows open after the reset: {state.get('flows')}")
        yield 0.0

    def _f_latency(self, run: FaultRun) -> Generator[float, None, None]:
        self._proxy().set_mode(
            "latency", latency_ms=run.params["latency_ms"], jitter_ms=run.params["jitter_ms"]
        )
        run.started = time.time()
        try:
            yield self.plan[run.index].active
        finally:
            self._proxy().set_mode("pass")
            run.ended = time.time()

    def _f_redis_kill(self, run: FaultRun) -> Generator[float, None, None]:
        assert self.stack is not None
        run.started = time.time()
        run.ended = self.stack.redis_kill_restart()
        run.notes.append(f"Redis answered again {run.ended - run.started:.2f}s after kill -9")
        yield 0.0

    def _f_redis_stop(self, run: FaultRun) -> Generator[float, None, None]:
        assert self.stack is not None
        self.stack.redis_signal(signal.SIGSTOP)
        self.redis_paused = True
        run.started = time.time()
        try:
            yield self.plan[run.index].active
        finally:
            self.stack.redis_signal(signal.SIGCONT)
            self.redis_paused = False
            run.ended = time.time()

    def _consumer_pid(self, run: FaultRun) -> Generator[float, None, int]:
        assert self.stack is not None
        deadline = time.time() + 20.0
        while True:
            pid = self.stack.pid_of(run.target)
            if pid is not None:
                return pid
            if time.time() > deadline:
                raise RuntimeError(f"{run.target} not RUNNING")
            yield 0.25

    def _f_consumer_kill(self, run: FaultRun) -> Generator[float, None, None]:
        pid = yield from self._consumer_pid(run)
        run.old_pid = pid
        os.kill(pid, signal.SIGKILL)
        run.started = run.ended = time.time()
        yield 0.0

    def _f_consumer_stop(self, run: FaultRun) -> Generator[float, None, None]:
        assert self.stack is not None
        spec = self.specs[run.kind]
        pid = yield from self._consumer_pid(run)
        run.old_pid = pid
        os.kill(pid, signal.SIGSTOP)
        self.paused_pids.add(pid)
        run.started = time.time()
        deadline = run.started + (spec.detect_bound or 30.0)
        try:
            while time.time() < deadline:
                with contextlib.suppress(Exception):
                    new = self.stack.pid_of(run.target)
                    if new is not None and new != pid:
                        run.ended = time.time()
                        break
                yield 0.25
            else:
                run.notes.append(
                    "the outside watchdog did not restart it in time; the soak sent SIGCONT"
                )
        finally:
            status = proc_status(pid)
            if status is not None and status[2] == "T":
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self.paused_pids.discard(pid)
            if run.ended is None:
                run.ended = time.time()

    def _inject(
        self, run: FaultRun, kind: str, count: int, poll: float = 0.1
    ) -> Generator[float, None, None]:
        assert self.producer is not None
        injection = self.producer.inject(kind, count)
        deadline = time.time() + 30.0
        while not injection.pushed.is_set():
            if time.time() > deadline:
                raise RuntimeError(f"the producer could not push the {kind} task(s) in 30s")
            yield poll
        run.ids = list(injection.ids)
        run.started = run.ended = injection.pushed_at
        run.notes.append(f"{len(run.ids)} task(s): ids {run.ids[0]}..{run.ids[-1]}")

    def _f_fail_burst(self, run: FaultRun) -> Generator[float, None, None]:
        yield from self._inject(run, "fail", int(run.params.get("count", 10)))

    def _f_hang(self, run: FaultRun) -> Generator[float, None, None]:
        yield from self._inject(run, "hang", 1)

    def _redis_direct(self) -> Any:
        import redis

        assert self.stack is not None
        return redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=5, socket_connect_timeout=2
        )

    def _f_oom(self, run: FaultRun) -> Generator[float, None, None]:
        """Fill Redis to maxmemory (noeviction) right after a backlog, hold, free it again.

        maxmemory is set just above the used memory, the producer pushes a backlog, and a
        filler key takes the rest until Redis refuses it (OOM). maxmemory is then lowered a
        little below what is used, so that neither the filler's own client buffers being
        shrunk nor the memory the consumers free by draining ends the fault early: what is
        still queued must drain while Redis refuses writes. The filler is topped up if
        Redis ever accepts writes again during the hold.
        """
        client = self._redis_direct()
        backlog = int(run.params.get("backlog", 1000))
        size = 128 * backlog  # a task body and its list entry, roughly
        margin = max(int(float(run.params.get("margin_mb", 1)) * 2**20), 2 * size)
        try:
            config = {**client.config_get("maxmemory"), **client.config_get("maxmemory-policy")}
            self.oom_restore = {k: str(v) for k, v in config.items()}
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", str(_used_memory(client) + margin))
            yield from self._inject(run, "ok", backlog, poll=0.02)
            run.notes[-1] = "backlog " + run.notes[-1]
            used, limit = make_full(client, size + 2 * OOM_CHUNK)
            run.started = time.time()
            run.counts["maxmemory"] = limit
            refused_before = self.producer.push_refused if self.producer else 0
            peak = used
            while time.time() < run.started + self.plan[run.index].active:
                yield 0.25
                _fill(client, most=16)
                peak = max(peak, _used_memory(client))
            run.counts["producer_pushes_refused"] = (
                self.producer.push_refused - refused_before if self.producer else 0
            )
            run.counts["used_memory_growth_bytes"] = peak - used
        finally:
            with contextlib.suppress(Exception):
                run.counts["filler_bytes"] = OOM_CHUNK * int(client.llen(OOM_FILLER_KEY))
            client.close()
            self._oom_undo()
            if run.started is not None:
                run.ended = time.time()

    def _oom_undo(self) -> None:
        """Delete the filler and put maxmemory and its policy back (idempotent)."""
        if self.oom_restore is None:
            return
        client = self._redis_direct()
        try:
            client.delete(OOM_FILLER_KEY)
            for name, value in self.oom_restore.items():
                client.config_set(name, value)
            self.oom_restore = None
        finally:
            client.close()

    def _attempts_now(self) -> dict[str, int]:
        """Failed Redis calls so far per consumer, from its metrics (absent when unreadable)."""
        assert self.stack is not None
        out: dict[str, int] = {}
        for name, url in self.stack.consumer_metrics().items():
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=1.0) as reply,
            ):
                out[name] = redis_errors_total(reply.read().decode("utf-8", "replace"))
        return out

    def _f_long_outage(self, run: FaultRun) -> Generator[float, None, None]:
        """Redis shut down until every consumer made thousands of reconnect attempts.

        Held until the consumers' own error counters say so (or `max_hold_s`; without
        metrics, the planned time), then Redis is started again from its AOF.
        """
        assert self.stack is not None
        target = int(run.params.get("attempts", 1500))
        max_hold = float(run.params.get("max_hold_s", 45.0))
        before = self._attempts_now()
        run.started = time.time()  # consumers may notice while the shutdown is under way
        self.redis_down = True
        self.stack.redis_shut_down()
        made: dict[str, int] = {}
        try:
            while time.time() < run.started + max_hold:
                yield 0.5
                now = self._attempts_now()
                made = {k: v - before.get(k, 0) for k, v in now.items()}
                if not before or len(now) < len(before):
                    if time.time() >= run.started + self.plan[run.index].active:
                        break
                elif all(v >= target for v in made.values()):
                    break
            run.counts.update(made)
        finally:
            run.ended = self.stack.redis_start()
            self.redis_down = False
        run.notes.append(
            f"Redis down {run.ended - run.started:.1f}s (until every consumer made {target} "
            f"attempts, at most {max_hold:g}s)"
        )

    # -- the end ----------------------------------------------------------------------------
    def _drain(self) -> None:
        """Wait (bounded) until every task is done or dead-lettered and Redis holds nothing."""
        assert self.producer and self.tail and self.sampler
        self.say(f"production stopped; draining (deadline {self.opts.drain_timeout:g}s)")
        started = time.monotonic()
        deadline = started + self.opts.drain_timeout
        scan = 0
        idle_since: float | None = None
        while not self.stop_event.is_set():
            self.tail.poll()
            with self.producer.lock:
                kinds = self.producer.produced.kinds
                while scan < len(kinds) and (kinds[scan] != 1 or self.tail.is_done(scan)):
                    scan += 1
                undone = sum(
                    1 for n in range(scan, len(kinds)) if kinds[n] == 1 and not self.tail.is_done(n)
                )
                expected = set(self.producer.produced.ids_of("fail")) | set(
                    self.producer.produced.ids_of("hang")
                )
            depths = self.sampler.latest.get("depths") or {}
            idle = bool(depths) and not any(
                depths.get(k) for k in ("pending", "delayed", "processing")
            )
            dead_ok = not expected or expected <= self._dead_ids_live()
            if undone == 0 and idle and dead_ok:
                self.drained = True
                break
            # Redis holds nothing more to do, yet tasks are not recorded: they never will be
            # (records are written before the ack); waiting longer cannot change the verdict.
            idle_since = (idle_since or time.monotonic()) if idle else None
            if idle_since is not None and time.monotonic() - idle_since > IDLE_GIVE_UP:
                self.drained = True
                self.say(f"Redis is idle with {undone} task(s) never done: they are lost")
                break
            if time.monotonic() >= deadline:
                self.say(f"drain deadline passed with {undone} task(s) not done")
                break
            self.progress.update(
                f"draining: {undone} task(s) to go, backlog {depths.get('pending', '?')}, "
                f"{deadline - time.monotonic():.0f}s left"
            )
            self.stop_event.wait(0.5)
        self.drain_seconds = time.monotonic() - started

    def _snapshot_redis(self) -> None:
        """Dead letters and whatever is still in Redis, read before Redis is stopped."""
        import redis

        from daemon.keys import QueueKeys

        assert self.stack is not None
        qk = QueueKeys(self.opts.queue)
        client: Any = redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        try:
            self.dead_snapshot = list(client.lrange(qk.dead, 0, -1))
            places: dict[str, list[bytes]] = {"pending": client.lrange(qk.pending, 0, -1)}
            places["delayed"] = [m[16:] for m in client.zrange(qk.delayed, 0, -1)]
            held: list[bytes] = []
            for key in client.scan_iter(match=qk.processing_prefix + "*", count=1000):
                held += client.lrange(key, 0, -1)
            places["processing"] = held
        except redis.RedisError as exc:
            self.say(f"could not read Redis at the end: {exc}")
            return
        finally:
            client.close()
        from daemon import soak_handler

        for place, bodies in places.items():
            ids = []
            for body in bodies:
                with contextlib.suppress(ValueError):
                    task_id = soak_handler.parse_body(body).get("id")
                    if isinstance(task_id, int):
                        ids.append(task_id)
            self.leftovers[place] = ids
        with open(self.opts.run_dir / "dead_letters.jsonl", "wb") as out:
            for entry in self.dead_snapshot:
                out.write(entry + b"\n")

    def _shutdown(self) -> None:
        """Stop the threads, undo faults, stop every process started; bounded throughout."""
        if self.producer is not None:
            self.producer.producing.clear()
            self.producer.stop(5.0)
        self._close_current()
        self._undo_faults()
        if self.sampler is not None:
            self.sampler.stop(5.0)
        self.teardown_started = time.time()
        if self.stack is not None:
            self.say("stopping the stack" + (" (hurrying)" if self.hurry else ""))
            try:
                self.stack.teardown(lambda: self.hurry)
            except Exception as exc:  # noqa: BLE001 - report, never leave the rest running
                self.say(f"teardown problem: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self.stack.finish_logs()


# ---------------------------------------------------------------------------- analysis
def _used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def make_full(client: Any, below: int) -> tuple[int, int]:
    """Fill until Redis refuses a write as OOM, then keep it full: maxmemory `below` bytes
    under the memory used. Returns (used, maxmemory); raises RuntimeError if never refused."""
    if not _fill(client):
        raise RuntimeError("Redis never refused the filler (maxmemory not reached)")
    used = _used_memory(client)
    limit = max(1, used - below)
    client.config_set("maxmemory", str(limit))
    return used, limit


def _fill(client: Any, most: int = 512) -> bool:
    """Append filler chunks until Redis refuses one as OOM (True), at most `most` of them."""
    import redis

    chunk = b"x" * OOM_CHUNK
    for _ in range(most):
        try:
            client.rpush(OOM_FILLER_KEY, chunk)
        except redis.exceptions.OutOfMemoryError:
            return True
    return False


_ERRORS_LINE = re.compile(r"^taskd_redis_errors_total(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def redis_errors_total(metrics_text: str) -> int:
    """Sum of `taskd_redis_errors_total` over its labels in a /metrics page."""
    return int(sum(float(v) for v in _ERRORS_LINE.findall(metrics_text)))


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The sampler's lines (time, depths, per-process pid/RSS/fds)."""
    out = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def build_series(
    origin: float,
    span: float,
    produced: ProducedSet,
    rec: Reconciliation,
    samples: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Per-bucket throughput and latency, backlog and RSS over time, for the picture."""
    bucket = max(1.0, float(round(span / 300.0)))
    n = int(span // bucket) + 1

    def slot(t: float) -> int | None:
        i = int((t - origin) // bucket)
        return i if 0 <= i < n else None

    made = [0] * n
    for k, t in zip(produced.kinds, produced.enqueued, strict=True):
        if k and (i := slot(t)) is not None:
            made[i] += 1
    done = [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    for t, latency in zip(rec.done_at, rec.done_latency, strict=True):
        if (i := slot(t)) is not None:
            done[i] += 1
            lat[i].append(latency)
    p50, p99 = [], []
    for values in lat:
        values.sort()
        p50.append(percentile(values, 50))
        p99.append(percentile(values, 99))
    backlog = [
        (s["t"] - origin, s["depths"]["pending"] + s["depths"]["delayed"])
        for s in samples
        if s.get("depths")
    ]
    rss: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for s in samples:
        for name, (pid, mb, _fds, _state) in s.get("procs", {}).items():
            rss[name].append((s["t"] - origin, mb, pid))
    return {
        "bucket_s": bucket,
        "t": [i * bucket for i in range(n)],
        "produced_per_s": [m / bucket for m in made],
        "done_per_s": [d / bucket for d in done],
        "latency_p50": p50,
        "latency_p99": p99,
        "backlog": backlog,
        "rss": dict(rss),
    }


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev} (uncommitted changes)" if dirty else rev or "unknown"


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


@dataclass
class RunState:
    """What the analysis needs from a finished run; saved as state.json so a run folder can be
    re-analysed later (`--report-only RUN_DIR`)."""

    opts: dict[str, Any]
    consumers: list[str]
    logs: dict[str, list[str]]
    records_dir: str
    base: int
    origin: float
    production_stopped: float
    teardown_started: float
    drained: bool
    drain_seconds: float
    extended_by: float
    signal_received: int | None
    error: str | None
    runs: list[dict[str, Any]]
    leftovers: dict[str, list[int]]
    producer: dict[str, Any]
    timings: dict[str, Any]
    git: str = ""  # the code under test, taken when the run started

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=str) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(**json.loads(path.read_text()))


def analyze(state: RunState, produced: ProducedSet | None = None) -> dict[str, Any]:
    """Reconcile the records, judge every fault, restart and slope: the report document."""
    opts = state.opts
    run_dir = Path(opts["run_dir"])
    origin = state.origin
    if produced is None:
        produced = read_produced(run_dir / "produced.tsv", state.base)
    timings = Timings(**state.timings)
    specs = fault_specs(bool(opts["compressed"]), timings)
    all_runs = [FaultRun(**r) for r in state.runs]
    records_dir = Path(state.records_dir)
    consumers = list(state.consumers)
    logs = {name: [Path(p) for p in paths] for name, paths in state.logs.items()}
    since = origin - 1.0
    ev = Evidence(consumers=consumers)
    link_events(ev, {c: logs.get(c, []) for c in consumers}, origin)
    ev.exits = [
        e for e in parse_supervisord_log(read_lines(logs.get("supervisord", []))) if e.t >= origin
    ]
    ev.watchdog_restarts = [
        (t, str(doc.get("process", "")), str(doc.get("reason", "")))
        for t, doc in parse_json_events(read_lines(logs.get("watchdog", [])), ["watchdog.restart"])
        if t >= origin
    ]
    ev.handled = collect_handled(read_records(records_dir, since), consumers)
    watched = {i for r in all_runs if r.kind == OOM and r.skipped is None for i in r.ids}
    if watched:
        ev.done_at = first_done(read_records(records_dir, since), watched)
    from daemon.reliable import parse_dead_letter

    dead_ids: list[int | None] = []
    dead_path = run_dir / "dead_letters.jsonl"
    entries = dead_path.read_bytes().splitlines() if dead_path.exists() else []
    for entry in entries:
        task_id = dead_letter_id(entry, produced)
        dead_ids.append(task_id)
        failed_at = parse_dead_letter(entry).get("failed_at")
        if task_id is not None and isinstance(failed_at, int | float):
            ev.dead_at[task_id] = min(ev.dead_at.get(task_id, math.inf), float(failed_at))
    runs = [r for r in all_runs if r.skipped is None]
    results = {r.index: evaluate_fault(r, specs[r.kind], ev, origin) for r in runs}
    samples = read_samples(run_dir / "samples.jsonl")
    backlog = [
        (s["t"], s["depths"]["pending"] + s["depths"]["delayed"])
        for s in samples
        if s.get("depths")
    ]
    end_of_run = state.teardown_started or time.time()
    rate = float(opts["rate"])
    windows = fault_windows(runs, results, backlog, rate, end_of_run)
    rec = reconcile(produced, read_records(records_dir, since), dead_ids, windows)
    exits = explain_exits(ev.exits, runs, results, specs, state.teardown_started or math.inf)
    policy = LeakPolicy()
    per_name: dict[str, list[tuple[float, int, float, float]]] = defaultdict(list)
    for s in samples:
        for name, (pid, mb, fds, _state) in s.get("procs", {}).items():
            per_name[name].append((s["t"], pid, mb, fds))
    judged = set(consumers) | {"subscriber", "watchdog"}
    resources = {
        name: {**judge_process(series, policy), "counts_for_verdict": name in judged}
        for name, series in sorted(per_name.items())
    }
    leftovers = {place: set(ids) for place, ids in state.leftovers.items()}
    dead_set = set(rec.dead_found)
    lost_where: Counter[str] = Counter()
    for task_id in rec.lost:
        place = next((p for p, ids in leftovers.items() if task_id in ids), None)
        lost_where[place or ("dead letters" if task_id in dead_set else "nowhere")] += 1

    # -- verdict ----------------------------------------------------------------------------
    fault_rows = [results[r.index] for r in runs]
    faults_ok = sum(1 for r in fault_rows if r["ok"])
    leaks = [n for n, r in resources.items() if r["counts_for_verdict"] and r["leak"]]
    unjudged = [n for n, r in resources.items() if r["counts_for_verdict"] and not r["judged"]]
    unexplained = [x for x in exits if x["explained_by"] is None]
    collateral = [x for x in exits if x["collateral"]]
    where = ", ".join(f"{n} {p}" for p, n in lost_where.items())
    checks = [
        _check(
            "nothing lost",
            not rec.lost,
            f"{len(rec.lost)} of {rec.produced_ok} tasks designed to succeed never done"
            + (f" (still in Redis: {where})" if where else ""),
        ),
        _check(
            "every fault detected and recovered within its bound",
            faults_ok == len(fault_rows),
            f"{faults_ok}/{len(fault_rows)} faults",
        ),
        _check(
            "dead letters are exactly the tasks designed to fail",
            not rec.dead_missing and not rec.dead_unexpected and not rec.dead_foreign,
            f"expected {len(rec.dead_expected)}, found {len(rec.dead_found)}"
            + (f"; missing {rec.dead_missing[:10]}" if rec.dead_missing else "")
            + (f"; unexpected {rec.dead_unexpected[:10]}" if rec.dead_unexpected else "")
            + (f"; {rec.dead_foreign} foreign" if rec.dead_foreign else ""),
        ),
        _check(
            "no memory or fd slope says leak",
            not leaks,
            ("leak: " + ", ".join(leaks)) if leaks else "no judged process leaks",
        ),
        _check(
            "every process restart is explained by a fault",
            not unexplained,
            f"{len(exits)} restart(s), {len(unexplained)} unexplained",
        ),
    ]
    warnings: list[str] = []
    if rec.duplicates_unexplained:
        warnings.append(
            f"{len(rec.duplicates_unexplained)} duplicate(s) away from any fault window: "
            f"{rec.duplicates_unexplained[:10]}"
        )
    for x in collateral:
        warnings.append(
            f"{x['process']} exited ({x['why']}) {x['explained_by']} at "
            f"+{x['t'] - origin:.1f}s (collateral restart)"
        )
    if unjudged:
        warnings.append(
            "not judged for leaks (incarnation too short after warm-up): " + ", ".join(unjudged)
        )
    if not state.drained and state.signal_received is None:
        warnings.append(f"the backlog did not drain within {opts['drain_timeout']:g}s")
    if state.extended_by > 0:
        warnings.append(f"production ran {state.extended_by:.0f}s longer: faults recovered late")
    skipped = [r for r in all_runs if r.skipped]
    for r in skipped:
        warnings.append(f"fault {r.kind} not run on the attached stack: {r.skipped}")
    producer = state.producer
    if producer.get("skipped_seconds", 0.0) > 1.0:
        warnings.append(
            f"the producer could not push for {producer['skipped_seconds']:.0f}s in total "
            "(Redis down or frozen); it resumed its pace without bursting"
        )
    if producer.get("push_refused", 0):
        warnings.append(
            f"Redis refused the producer's pushes of {producer['push_refused']} task(s) (out "
            "of memory): never produced, so not counted as lost"
        )
    if state.error:
        warnings.append(f"run error: {state.error}")
    passed = all(c["ok"] for c in checks) and state.signal_received is None and not state.error
    status = "PASS" if passed else "FAIL"
    if state.signal_received is not None:
        status = "INTERRUPTED"
    failed = [c["check"] for c in checks if not c["ok"]]
    summary = (
        f"{rec.produced} tasks produced, {len(rec.lost)} lost; {faults_ok}/{len(fault_rows)} "
        f"faults recovered within bounds; {len(rec.dead_found)}/{len(rec.dead_expected)} dead "
        f"letters as designed; {'leak in ' + ', '.join(leaks) if leaks else 'no leak slope'}"
    )
    if failed:
        summary += " -- failed: " + "; ".join(failed)
    published = int(producer.get("published", 0))
    lost_msgs_by_fault, lost_msgs_outside = pubsub_losses(published, rec.pubsub_seen, windows)
    if lost_msgs_outside:
        warnings.append(f"{lost_msgs_outside} pub/sub message(s) lost while no fault was going on")
    restarts_per: dict[str, dict[str, Any]] = {}
    for x in exits:
        row = restarts_per.setdefault(x["process"], {"restarts": 0, "why": Counter()})
        row["restarts"] += 1
        row["why"][f"{x['why']} -> {x['explained_by'] or 'UNEXPLAINED'}"] += 1
    doc: dict[str, Any] = {
        "verdict": {
            "pass": passed,
            "status": status,
            "summary": summary,
            "checks": checks,
            "warnings": warnings,
        },
        "run": {
            "command": opts["command"],
            "seed": opts["seed"],
            "duration_s": opts["duration"],
            "rate_per_s": opts["rate"],
            "consumers": len(consumers),
            "compressed": opts["compressed"],
            "faults_asked": list(opts["faults"]),
            "attached": opts["attach"],
            "handler": opts["handler"],
            "queue": opts["queue"],
            "run_dir": str(opts["run_dir"]),
            "started_at": datetime.fromtimestamp(origin).astimezone().isoformat(timespec="seconds"),
            "production_s": round(state.production_stopped - origin, 1),
            "extended_s": round(state.extended_by, 1),
            "drain_s": round(state.drain_seconds, 1),
            "drained": state.drained,
            "interrupted_by": (
                signal.Signals(state.signal_received).name if state.signal_received else None
            ),
            "git": state.git or "unknown",
            "timings": state.timings,
            "id_base": state.base,
        },
        "tasks": {
            **rec.as_dict(),
            "lost_where": dict(lost_where),
            "push_errors": producer.get("push_errors", 0),
            "push_refused": producer.get("push_refused", 0),
            "producer_paused_s": round(producer.get("skipped_seconds", 0.0), 1),
        },
        "pubsub": {
            "published": published,
            "heard_by_no_subscriber": producer.get("published_unheard", 0),
            "publish_errors": producer.get("publish_errors", 0),
            "received": rec.pubsub_received,
            "lost": max(0, published - rec.pubsub_received),
            "lost_by_fault": lost_msgs_by_fault,
            "lost_outside_faults": lost_msgs_outside,
            "note": "pub/sub keeps nothing: messages published while the subscriber is cut off "
            "are lost by design (reported, not a failure; use --durable where that matters)",
        },
        "latency": rec.latency,
        "faults": [
            {
                **{k: v for k, v in r.items() if k != "recovered_at"},
                "window_s": next(
                    (
                        [round(w.start - origin, 1), round(w.end - origin, 1)]
                        for w in windows
                        if w.label == all_runs[r["index"] - 1].label()
                    ),
                    None,
                ),
            }
            for r in fault_rows
        ],
        "faults_skipped": [{"kind": r.kind, "why": r.skipped} for r in skipped],
        "restarts": {
            "per_process": {
                k: {"restarts": v["restarts"], "why": dict(v["why"])}
                for k, v in sorted(restarts_per.items())
            },
            "exits": [{**x, "t": round(x["t"] - origin, 2)} for x in exits],
        },
        "resources": {"policy": asdict(policy), "processes": resources},
        "redis_leftovers": {p: len(ids) for p, ids in state.leftovers.items()},
    }
    span = max(1.0, end_of_run - origin)
    doc["_series"] = build_series(origin, span, produced, rec, samples)
    doc["_windows"] = [(w.start - origin, w.end - origin, w.label) for w in windows]
    return doc


# ---------------------------------------------------------------------------- the report
def _s(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}".strip()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _during(by_fault: dict[str, int], outside: int) -> str:
    parts = [f"{n} during {label}" for label, n in by_fault.items()]
    parts.append(f"{outside} outside any fault")
    return ", ".join(parts)


def render_markdown(doc: dict[str, Any]) -> str:
    """report.md: the verdict first, then the evidence a person checks it against."""
    v, run, tasks = doc["verdict"], doc["run"], doc["tasks"]
    out = [f"# Soak report: {v['status']}", "", f"**{v['status']}**: {v['summary']}.", ""]
    out += ["| check | result | detail |", "|---|---|---|"]
    out += [
        f"| {c['check']} | {'PASS' if c['ok'] else '**FAIL**'} | {c['detail']} |"
        for c in v["checks"]
    ]
    if v["warnings"]:
        out += ["", "Warnings (reported, not failing the run):", ""]
        out += [f"- {w}" for w in v["warnings"]]
    t = run["timings"]
    out += [
        "",
        "## Run",
        "",
        "| | |",
        "|---|---|",
        f"| command | `{run['command']}` |",
        f"| seed | {run['seed']} (replay the same schedule with `--seed {run['seed']}`) |",
        f"| started | {run['started_at']} |",
        f"| production | {run['production_s']} s at {run['rate_per_s']:g} tasks/s"
        + (f" ({run['extended_s']} s longer than asked)" if run["extended_s"] else "")
        + " |",
        f"| drain | {run['drain_s']} s ({'complete' if run['drained'] else 'INCOMPLETE'}) |",
        f"| consumers | {run['consumers']} (handler `{run['handler']}`) |",
        f"| stack | {'attached' if run['attached'] else 'started by the soak'}"
        f"{', compressed schedule' if run['compressed'] else ''} |",
        f"| consumer timings | block {t['block']:g} s, socket {t['socket']:g} s, connect "
        f"{t['connect']:g} s, stall {t['stall']:g} s, task {t['task']:g} s, max attempts "
        f"{t['max_attempts']}, backoff cap {t['backoff_cap']:g} s, heartbeat TTL "
        f"{t['heartbeat_ttl']:g} s, watchdog grace {t['watchdog_grace']:g} s |",
        f"| code | {run['git']} |",
        f"| run folder | `{run['run_dir']}` |",
        "",
        "## Tasks (reconciled from the handler's records, not from logs)",
        "",
        "| produced | designed to succeed | done | lost | duplicates | dead letters "
        "(expected / found) |",
        "|---|---|---|---|---|---|",
        f"| {tasks['produced']} | {tasks['produced_ok']} | {tasks['done']} | "
        f"{tasks['lost_count']} | {tasks['duplicates']} | {len(tasks['dead_expected'])} / "
        f"{len(tasks['dead_found'])} |",
        "",
    ]
    if tasks["lost_count"]:
        out += [
            f"Lost task ids (first {len(tasks['lost'])}): {tasks['lost'][:30]}; where they are "
            f"at the end: {tasks['lost_where']}.",
            "",
        ]
    near = ", ".join(f"{n} near {label}" for label, n in tasks["duplicates_near"].items())
    out += [
        f"Duplicates (a task done more than once: at-least-once delivery after a kill or a "
        f"lost connection): {tasks['duplicates']}"
        + (f" ({near})" if near else "")
        + (
            f"; away from any fault: {tasks['duplicates_unexplained'][:20]}"
            if tasks["duplicates_unexplained"]
            else ""
        )
        + ".",
        "",
    ]
    ps = doc["pubsub"]
    out += [
        f"Pub/sub: {ps['published']} published, {ps['received']} received, {ps['lost']} lost "
        f"({_during(ps.get('lost_by_fault', {}), ps.get('lost_outside_faults', 0))}; "
        f"{ps['heard_by_no_subscriber']} had no subscriber listening). {ps['note']}.",
        "",
        "## End-to-end latency (handled - enqueued)",
        "",
        "A task is in the fault phase when its time in the system overlaps a fault window (from "
        "the fault's start until it recovered and the backlog settled).",
        "",
        "| phase | tasks | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for phase in ("quiet", "fault", "all"):
        lat = doc["latency"].get(phase, {})
        out.append(
            f"| {phase} | {lat.get('count', 0)} | {_ms(lat.get('p50'))} | {_ms(lat.get('p95'))} "
            f"| {_ms(lat.get('p99'))} | {_ms(lat.get('max'))} |"
        )
    out += [
        "",
        "## Faults",
        "",
        "Detection: the first `redis.disconnected` of a consumer (link and Redis faults), "
        "supervisord's exit line (kill -9, exit 70 of a hang), the watchdog's `watchdog.restart` "
        "(frozen consumer), a consumer's `redis.out_of_memory` (Redis full). Recovery: every "
        "consumer handled a task again after the fault ended (the restarted process, for "
        "consumer faults; all failing tasks dead-lettered, for poison tasks; after a long outage "
        "also every consumer's `redis.reconnected`, and no process exited meanwhile).",
        "",
        "| # | fault | at | held | detected after (bound) | recovered after (bound) | result "
        "| notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in doc["faults"]:
        name = f"{f['kind']} {f['target']}".strip()
        detect = (
            "n/a"
            if f["detect_bound_s"] is None
            else f"{_s(f['detected_after_s'])} ({f['detect_bound_s']:g} s)"
        )
        out.append(
            f"| {f['index']} | {name} | {_s(f['started_s'], 's', 1)} | {_s(f['held_s'], 's', 1)} "
            f"| {detect} | {_s(f['recovered_after_s'])} ({f['recover_bound_s']:g} s) | "
            f"{'PASS' if f['ok'] else '**FAIL**: ' + f['why']} | {'; '.join(f['notes'])} |"
        )
    for f in doc["faults_skipped"]:
        out.append(f"| - | {f['kind']} | - | - | - | - | not run | {f['why']} |")
    out += ["", "## Restarts", ""]
    per = doc["restarts"]["per_process"]
    if per:
        out += ["| process | restarts | why -> explained by |", "|---|---|---|"]
        for name, row in per.items():
            why = "; ".join(f"{k} (x{n})" if n > 1 else k for k, n in row["why"].items())
            out.append(f"| {name} | {row['restarts']} | {why} |")
    else:
        out.append("No process exited during the run.")
    res = doc["resources"]
    pol = res["policy"]
    out += [
        "",
        "## Resources (RSS and open fds, sampled from /proc, following restarts)",
        "",
        f"Leak rule: on each process's longest incarnation, skip the first "
        f"{pol['warmup_fraction'] * 100:.0f}% (at least {pol['warmup_min']:g} s), then a "
        f"Theil-Sen slope above {pol['rss_mb_per_hour']:g} MB/h with a fitted growth above "
        f"{pol['rss_min_growth_mb']:g} MB (fds: {pol['fds_per_hour']:g}/h and "
        f"{pol['fds_min_growth']:g}), seen in both halves of the window (at half the rate), "
        f"is a leak. Windows under {pol['min_window']:g} s are not judged. Only taskd "
        "processes (consumers, subscriber, watchdog) count for the verdict; "
        "Redis, the proxy and supervisord are shown for information.",
        "",
        "| process | incarnations | RSS MB min-max | RSS slope MB/h | fds first-last | "
        "fd slope /h | judged window | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["processes"].items():
        rss, fds = r.get("rss_mb", {}), r.get("fds", {})
        if not r["judged"]:
            verdict = "not judged: " + str(rss.get("why") or fds.get("why") or r.get("why", ""))
        else:
            verdict = "**LEAK**" if r["leak"] else "flat"
        if not r["counts_for_verdict"]:
            verdict += " (info)"
        out.append(
            f"| {name} | {r.get('incarnations', 0)} | {r.get('rss_mb_min', '-')}-"
            f"{r.get('rss_mb_max', '-')} | {rss.get('slope_per_hour', '-')} | "
            f"{fds.get('first', '-')}-{fds.get('last', '-')} | {fds.get('slope_per_hour', '-')} "
            f"| {rss.get('window_s', '-')} s | {verdict} |"
        )
    pic = doc.get("picture") or {}
    out += ["", "## Picture", ""]
    if pic.get("file"):
        out += [
            "Throughput, backlog and latency over time with the fault windows shaded, and RSS "
            "per process:",
            "",
            f"![soak report]({pic['file']})",
        ]
    else:
        out.append(f"No picture: {pic.get('why', 'not rendered')}.")
    out += [
        "",
        "## Files in the run folder",
        "",
        "`report.json` (everything above, machine-readable), `records/` (one line per handling, "
        "written by the handler), `produced.tsv` (every task pushed), `samples.jsonl` (depths, "
        "RSS, fds), `dead_letters.jsonl`, `plan.json` (the seeded schedule), `state.json` "
        "(for `--report-only`), `var/log/` (supervisord, consumers, subscriber, watchdog, "
        "Redis, proxy).",
        "",
    ]
    return "\n".join(out)


def render_png(path: Path, doc: dict[str, Any]) -> str | None:
    """report.png with matplotlib; returns why not when it cannot (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "matplotlib is not installed (install the soak extra: "
            "`.venv/bin/pip install 'taskd[soak]'` or `.venv/bin/pip install matplotlib`)"
        )
    series, windows = doc["_series"], doc["_windows"]
    fig, axes = plt.subplots(4, 1, figsize=(12, 11), sharex=True)
    (ax_tp, ax_bl, ax_lat, ax_rss) = axes
    t = series["t"]
    ax_tp.plot(t, series["produced_per_s"], label="produced/s", color="tab:blue", lw=1)
    ax_tp.plot(t, series["done_per_s"], label="done/s (first handling)", color="tab:green", lw=1)
    ax_tp.set_ylabel("tasks/s")
    ax_tp.legend(loc="upper right", fontsize=8)
    if series["backlog"]:
        bt, bv = zip(*series["backlog"], strict=True)
        ax_bl.plot(bt, bv, color="tab:orange", lw=1)
    ax_bl.set_ylabel("backlog\n(pending+delayed)")
    p50 = [(x, y) for x, y in zip(t, series["latency_p50"], strict=True) if y is not None]
    p99 = [(x, y) for x, y in zip(t, series["latency_p99"], strict=True) if y is not None]
    for points, label, color in ((p50, "p50", "tab:purple"), (p99, "p99", "tab:red")):
        if points:
            xs, ys = zip(*points, strict=True)
            ax_lat.plot(xs, [max(y, 1e-4) for y in ys], label=label, color=color, lw=1)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("end-to-end\nlatency (s)")
    ax_lat.legend(loc="upper right", fontsize=8)
    for name, points in sorted(series["rss"].items()):
        line_x: list[float] = []
        line_y: list[float] = []
        for i, (x, y, pid) in enumerate(points):
            if i and points[i - 1][2] != pid:  # a restart: break the line
                line_x.append(x)
                line_y.append(math.nan)
            line_x.append(x)
            line_y.append(y)
        ax_rss.plot(line_x, line_y, label=name, lw=1)
    ax_rss.set_ylabel("RSS (MB)")
    ax_rss.set_xlabel("seconds since production started")
    ax_rss.legend(loc="upper left", fontsize=7, ncol=4)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        for start, end, _label in windows:
            ax.axvspan(start, max(end, start + 0.5), color="tab:red", alpha=0.12)
    for start, _end, label in windows:
        ax_tp.annotate(
            label.split(" ", 1)[1],
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
        )
    v = doc["verdict"]
    fig.suptitle(f"taskd soak: {v['status']} ({doc['run']['started_at']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write_reports(run_dir: Path, doc: dict[str, Any]) -> None:
    """report.png (when matplotlib is there), report.json and report.md in the run folder."""
    why = None
    try:
        why = render_png(run_dir / "report.png", doc)
    except Exception as exc:  # noqa: BLE001 - a picture problem must not lose the verdict
        why = f"rendering failed: {type(exc).__name__}: {exc}"
    doc["picture"] = {"file": None if why else "report.png", "why": why}
    public = {k: v for k, v in doc.items() if not k.startswith("_")}
    (run_dir / "report.json").write_text(json.dumps(public, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(render_markdown(public))


# ---------------------------------------------------------------------------- command line
_EPILOG = f"""\
faults (--faults all, or a comma list):
{chr(10).join(f"  {k:<14} {v}" for k, v in SIMULATES.items())}

exit codes: 0 PASS (nothing lost, every fault recovered within its bound, dead letters exactly
as designed, no leak slope, every restart explained), 1 FAIL, 69 the stack could not start,
78 bad flags, 130/143 interrupted (SIGINT/SIGTERM; processes stopped, report written).

--attach expects a running supervisord stack (see docs/soak.md): its consumers run
--handler daemon.soak_handler:handle with SOAK_RECORDS_DIR=<--records-dir> and the soak
timings; --redis-url is the Redis they consume (the producer pushes there directly);
proxy faults need --proxy-control, Redis faults a [program:redis] in that supervisord;
oom needs CONFIG on that Redis; long-outage runs only on the soak's own stack (a schedule with
it gives every process a tiny reconnect backoff: 1 ms base, 10 ms cap).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The soak's flags."""
    p = _Parser(
        prog="taskd soak",
        description="Soak test: the taskd stack under load and scheduled faults, then a verdict "
        "reconciled from records (report.md, report.json, report.png in the run folder).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        help="how long to produce: 90s, 10m, 2h (default 10m; 2m with --compressed)",
    )
    p.add_argument("--rate", default="200", help="tasks per second (default 200)")
    p.add_argument("--faults", default="all", help="all, none, or a comma list (default all)")
    p.add_argument("--seed", help="seed of the fault schedule (default: random, printed)")
    p.add_argument("--run-dir", help="run folder (default var/soak/<timestamp>); must be empty")
    p.add_argument("--consumers", default="2", help="consumer processes (default 2)")
    p.add_argument(
        "--compressed",
        action="store_true",
        help="short faults (black hole 6 s, latency 8 s, SIGSTOP 4 s, OOM 8 s, a long "
        "outage of ~1,500 reconnect attempts...): every kind once in about 2 minutes, for CI",
    )
    p.add_argument(
        "--attach",
        action="store_true",
        help="use a running stack (--supervisor-conf, --redis-url, --records-dir)",
    )
    p.add_argument("--supervisor-conf", help="with --attach: the stack's supervisord conf")
    p.add_argument("--redis-url", help="with --attach: the Redis the stack consumes")
    p.add_argument("--records-dir", help="with --attach: the stack's SOAK_RECORDS_DIR folder")
    p.add_argument(
        "--proxy-control",
        help="with --attach: HOST:PORT of the chaos proxy's "
        "control API in front of that Redis (enables the link faults)",
    )
    p.add_argument("--queue", default=DEFAULT_QUEUE, help=f"queue (default {DEFAULT_QUEUE})")
    p.add_argument(
        "--channel", default=DEFAULT_CHANNEL, help=f"pub/sub channel (default {DEFAULT_CHANNEL})"
    )
    p.add_argument("--pubsub-rate", default="5", help="pub/sub messages per second (default 5)")
    p.add_argument(
        "--handler",
        default=DEFAULT_HANDLER,
        help=f"consumer handler (default {DEFAULT_HANDLER}; the self-test uses "
        "daemon.soak_handler:handle_lossy)",
    )
    p.add_argument(
        "--report-only",
        metavar="RUN_DIR",
        help="write report.md/json/png again from a finished run folder (no processes)",
    )
    p.add_argument(
        "--drain-timeout",
        help="seconds to wait for the backlog at the end (default 120; 60 with --compressed)",
    )
    return p


def _number(flag: str, text: str, low: float, high: float, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{flag}={text!r}: expected {kind} in {low:g}..{high:g}") from None
    if not (low <= value <= high) or not math.isfinite(value):
        raise UsageError(f"{flag}={text!r}: expected a value in {low:g}..{high:g}")
    return value


def parse_options(argv: Sequence[str] | None) -> Options:
    """Flags -> Options; raises UsageError with one line for anything wrong."""
    args = build_parser().parse_args(argv)
    try:
        duration = parse_duration(args.duration or ("2m" if args.compressed else "10m"))
    except ValueError as exc:
        raise UsageError(f"--duration={exc}") from None
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        raise UsageError(f"--faults: {exc}") from None
    rate = _number("--rate", args.rate, 0.1, 20000)
    consumers = int(_number("--consumers", args.consumers, 1, 20, integer=True))
    pubsub_rate = _number("--pubsub-rate", args.pubsub_rate, 0, 1000)
    seed = (
        int(_number("--seed", args.seed, 0, 2**63, integer=True))
        if args.seed is not None
        else random.SystemRandom().randrange(2**31)
    )
    drain = (
        _number("--drain-timeout", args.drain_timeout, 1, 86400)
        if args.drain_timeout
        else (60.0 if args.compressed else 120.0)
    )
    if args.handler.count(":") != 1 or not all(args.handler.split(":")):
        raise UsageError(f"--handler={args.handler!r}: expected module:function")
    attach_flags = ("supervisor_conf", "redis_url", "records_dir", "proxy_control")
    if args.attach:
        for name in attach_flags[:3]:
            if not getattr(args, name):
                raise UsageError(f"--attach needs --{name.replace('_', '-')}")
        from daemon import redis_url

        try:
            redis_url.parse(args.redis_url)
        except redis_url.RedisUrlError as exc:
            raise UsageError(f"--redis-url: {exc}") from None
        if not Path(args.supervisor_conf).is_file():
            raise UsageError(f"--supervisor-conf={args.supervisor_conf!r}: no such file")
        if args.proxy_control and not re.fullmatch(r"[\w.\-]+:\d{1,5}", args.proxy_control):
            raise UsageError(f"--proxy-control={args.proxy_control!r}: expected HOST:PORT")
    else:
        for name in attach_flags:
            if getattr(args, name):
                raise UsageError(f"--{name.replace('_', '-')} needs --attach")
    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UsageError(f"--run-dir={args.run_dir!r}: expected a new or empty folder")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = ROOT / "var" / "soak" / stamp
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = ROOT / "var" / "soak" / f"{stamp}-{n}"
    try:
        plan_schedule(faults, duration, seed, args.compressed, consumers, soak_timings(faults))
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    return Options(
        duration=duration,
        rate=rate,
        faults=faults,
        seed=seed,
        run_dir=run_dir,
        consumers=consumers,
        compressed=args.compressed,
        attach=args.attach,
        supervisor_conf=Path(args.supervisor_conf).resolve() if args.supervisor_conf else None,
        redis_url=args.redis_url,
        records_dir=Path(args.records_dir).resolve() if args.records_dir else None,
        proxy_control=args.proxy_control,
        handler=args.handler,
        queue=args.queue,
        channel=args.channel,
        pubsub_rate=pubsub_rate,
        drain_timeout=drain,
        sample_interval=1.0 if args.compressed or duration <= 300 else 2.0,
        progress_interval=5.0 if args.compressed else 10.0,
        faults_explicit=args.faults.strip().lower() not in ("all", "none", ""),
        command=" ".join(["soak", *(argv if argv is not None else sys.argv[1:])]),
    )


def _report_only(argv: Sequence[str] | None) -> Path | None:
    args = build_parser().parse_args(argv)
    if not args.report_only:
        return None
    run_dir = Path(args.report_only)
    if not (run_dir / "state.json").is_file():
        raise UsageError(f"--report-only={args.report_only!r}: no state.json in that folder")
    return run_dir


def report_again(run_dir: Path) -> int:
    """Re-analyse a finished run folder and rewrite its reports; exit code as the run's."""
    state = RunState.load(run_dir / "state.json")
    doc = analyze(state)
    write_reports(run_dir, doc)
    print(f"soak: {doc['verdict']['status']}: {doc['verdict']['summary']}", file=sys.stderr)
    if state.signal_received is not None:
        return 128 + state.signal_received
    return EXIT_PASS if doc["verdict"]["pass"] else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of `python -m daemon.soak`, `scripts/soak.py` and `taskd soak`."""
    try:
        if report_only := _report_only(argv):
            return report_again(report_only)
        opts = parse_options(argv)
    except UsageError as exc:
        print(f"soak: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_CONFIG
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    soak = SoakRun(opts)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, soak.on_signal)
    try:
        return soak.execute()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
