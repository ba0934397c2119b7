"""Each fault's verdict: detected and recovered within its bounds, exits explained."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from typing import Any

from tools.soak.evidence import Evidence, FaultRun, ProcessEvent
from tools.soak.records import Window
from tools.soak.settings import (
    CONSUMER_KILL,
    CONSUMER_STOP,
    FAIL_BURST,
    HANG,
    LATENCY,
    LINK_KINDS,
    LONG_OUTAGE,
    LONG_OUTAGE_MIN_ATTEMPTS,
    OOM,
    SIMULATES,
    FaultSpec,
)


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
            return f"{run.label()}: stall detector (--task-timeout)"
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
