"""What the logs, records and metrics say happened: supervisord and JSON log events, fault runs."""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tools.soak.records import Record

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


_ERRORS_LINE = re.compile(r"^taskd_redis_errors_total(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def redis_errors_total(metrics_text: str) -> int:
    """Sum of `taskd_redis_errors_total` over its labels in a /metrics page."""
    return int(sum(float(v) for v in _ERRORS_LINE.findall(metrics_text)))
