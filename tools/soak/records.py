"""Handler records, the produced set, fault windows and the reconciliation (pure)."""

from __future__ import annotations

import bisect
import contextlib
import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KIND_CODES = {"ok": 1, "fail": 2, "hang": 3}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}


@dataclass(frozen=True)
class Record:
    """One line written by tools/soak/handler.py: one handling of a task or message."""

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


def first_done(records: Iterable[Record], ids: set[int]) -> dict[int, float]:
    """When each of `ids` was first handled successfully (tasks never done are absent)."""
    wanted = {str(i) for i in ids}
    out: dict[int, float] = {}
    for r in records:
        if r.outcome == "ok" and r.id in wanted:
            task_id = int(r.id)
            out[task_id] = min(out.get(task_id, math.inf), r.handled)
    return out


def dead_letter_id(entry: bytes, produced: ProducedSet) -> int | None:
    """The task id of a dead letter when it is a task of this run, else None (foreign)."""
    from daemon.dead_letters import dead_letter_body, parse_dead_letter
    from tools.soak import handler as soak_handler

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
