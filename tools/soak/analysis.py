"""The analysis of a finished run: checks and the verdict from its saved state."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tools.soak.evaluation import evaluate_fault, explain_exits, fault_windows
from tools.soak.evidence import (
    Evidence,
    FaultRun,
    collect_handled,
    link_events,
    parse_json_events,
    parse_supervisord_log,
    read_lines,
)
from tools.soak.leaks import LeakPolicy, build_series, judge_process, read_samples
from tools.soak.records import (
    ProducedSet,
    dead_letter_id,
    first_done,
    pubsub_losses,
    read_produced,
    read_records,
    reconcile,
)
from tools.soak.settings import OOM, ROOT, Timings, fault_specs


def git_revision() -> str:
    """The checkout's short revision, marked when tracked files have uncommitted changes."""
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
    from daemon.dead_letters import parse_dead_letter

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
