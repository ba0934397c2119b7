"""The report: report.md, report.json and report.png in the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
