"""Durations and fault lists from the flags, and the seeded fault schedule (pure)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.soak.settings import (
    CONSUMER_KINDS,
    FAIL_BURST,
    KINDS,
    LATENCY,
    LONG_OUTAGE,
    OOM,
    Timings,
    fault_specs,
)

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
