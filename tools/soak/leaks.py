"""Memory and fd slopes per process: the leak verdict (pure), from the sampler's lines."""

from __future__ import annotations

import bisect
import contextlib
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.soak.records import ProducedSet, Reconciliation, percentile


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
