"""The soak test: its pure parts (flags, schedule, reconciliation, slopes, logs), its verdict on a
real stack under every fault kind, its self-test (an injected loss fails the verdict), attaching
to a running stack, and a clean stop when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, wait_until
from tools import soak
from tools.harness import pids_mentioning
from tools.soak import (
    CONSUMER_KILL,
    CONSUMER_STOP,
    FAIL_BURST,
    HANG,
    KINDS,
    LATENCY,
    LONG_OUTAGE,
    OOM,
    REDIS_KILL,
    Evidence,
    FaultRun,
    LeakPolicy,
    ProcessEvent,
    ProducedSet,
    Record,
    Window,
)
from tools.soak import handler as soak_handler

SCRIPT = str(ROOT / "scripts" / "soak.py")
# The CI soak's kinds: every kind but the Redis-full and long-outage ones, which do not fit its
# 90 s and run in tests/test_hostile_soak_faults.py.
CI_KINDS = tuple(k for k in KINDS if k not in (OOM, LONG_OUTAGE))


def run_soak(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(ROOT),
    )


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def leftovers(run_dir: Path) -> list[int]:
    """Processes of the run still alive: by the run folder in their command line, or by the pids
    the sampler saw (Redis rewrites its command line; the proxy's does not name the folder)."""
    alive = set(pids_mentioning(str(run_dir)))
    for sample in soak.read_samples(run_dir / "samples.jsonl"):
        for pid, *_ in sample["procs"].values():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if any(
                name in cmdline
                for name in (b"redis-server", b"chaos_proxy", b"taskd", b"supervisord")
            ):
                alive.add(pid)
    return sorted(alive)


# ---------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5m", 90)],
)
def test_duration_accepts_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert soak.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "0s", "-3m", "10 minutes", "1h-2m"])
def test_duration_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        soak.parse_duration(text)


def test_faults_flag_takes_all_none_or_a_list() -> None:
    assert soak.parse_faults("all") == KINDS
    assert soak.parse_faults("none") == ()
    assert soak.parse_faults("hang, redis_kill,hang") == (HANG, REDIS_KILL)
    assert OOM in KINDS and LONG_OUTAGE in KINDS
    assert soak.parse_faults("oom,long_outage") == (OOM, LONG_OUTAGE)
    assert soak.parse_faults("long-outage") == (LONG_OUTAGE,)
    with pytest.raises(ValueError, match="unknown fault"):
        soak.parse_faults("blackhole,earthquake")


@pytest.mark.parametrize(
    "args",
    [
        ["--duration", "soon"],
        ["--rate", "0"],
        ["--consumers", "two"],
        ["--faults", "meteor"],
        ["--duration", "2m"],  # the full schedule does not fit
        ["--attach"],
        ["--redis-url", "redis://127.0.0.1:1/0"],
        ["--handler", "nocolon"],
        ["--compressed", "--consumer-args", "--prefetch 5%"],
        ["--no-such-flag"],
    ],
)
def test_bad_flags_exit_78_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert soak.main(args) == 78
    err = capsys.readouterr().err
    assert err.startswith("soak: error: ") and err.count("\n") == 1, err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--compressed" in out
    for kind in KINDS:
        assert f"  {kind} " in out, kind


# ---------------------------------------------------------------------------- schedule
def test_schedule_covers_every_kind_and_is_reproducible_with_a_seed() -> None:
    first = soak.plan_schedule(KINDS, 120, 7, True, 2)
    again = soak.plan_schedule(KINDS, 120, 7, True, 2)
    other = soak.plan_schedule(KINDS, 120, 8, True, 2)
    assert first == again
    assert first != other
    assert sorted(p.kind for p in first) == sorted(KINDS)
    assert all(p.target.startswith("consumer_0") for p in first if p.kind.startswith("consumer"))
    by_kind = {p.kind: p for p in first}
    assert by_kind[OOM].params["backlog"] > 0
    assert by_kind[LONG_OUTAGE].params["attempts"] > soak.LONG_OUTAGE_MIN_ATTEMPTS


def test_schedule_spreads_faults_without_overlap_within_the_duration() -> None:
    specs = soak.fault_specs(False, soak.Timings())
    plan = soak.plan_schedule(KINDS, 3600, 1, False, 3)
    assert len(plan) >= 2 * len(KINDS)  # an hour holds several cycles
    for a, b in zip(plan, plan[1:], strict=False):
        assert b.at >= a.at + a.active + specs[a.kind].settle
    last = plan[-1]
    assert last.at + last.active + specs[last.kind].settle <= 3600


def test_compressed_schedule_fits_the_ci_run_and_a_short_full_run_is_refused() -> None:
    assert soak.plan_schedule(CI_KINDS, 90, 1, True, 2)
    assert soak.plan_schedule(KINDS, 120, 1, True, 2)  # the --compressed default, every kind
    with pytest.raises(soak.ScheduleError, match="at least"):
        soak.plan_schedule(KINDS, 90, 1, True, 2)
    assert soak.plan_schedule((OOM, LONG_OUTAGE), 40, 1, True, 2)
    with pytest.raises(soak.ScheduleError, match="at least"):
        soak.plan_schedule(KINDS, 120, 1, False, 2)
    assert soak.plan_schedule((), 10, 1, False, 2) == []


# ---------------------------------------------------------------------------- reconciliation
def produced_set(kinds: list[str], base: int = 1000, t0: float = 100.0) -> ProducedSet:
    produced = ProducedSet(base)
    for n, kind in enumerate(kinds, start=1):
        produced.add(base + n, t0 + n, kind)
    return produced


def rec(task_id: int, handled: float, outcome: str = "ok", pid: int = 1) -> Record:
    return Record(str(task_id), 0.0, handled, pid, "consumer_00", outcome)


def test_reconcile_counts_done_lost_duplicates_and_dead_letters() -> None:
    produced = produced_set(["ok", "ok", "ok", "fail", "hang", "ok"])
    records = [
        rec(1001, 101.5),
        rec(1002, 102.5),
        rec(1002, 160.0),  # ran twice: a duplicate, away from any fault
        rec(1004, 104.1, "fail"),
        rec(1005, 105.1, "hang"),
        rec(1006, 106.2),
        rec(1006, 129.0, pid=2),  # ran twice near the fault window below
        rec(9999, 1.0),  # not produced by this run
        Record("p1", 0.0, 1.0, 3, "subscriber", "msg"),
    ]
    result = soak.reconcile(produced, records, [1004, 1005, None], [Window(130.0, 131.0, "#1 x")])
    assert (result.produced, result.produced_ok, result.done) == (6, 4, 3)
    assert result.lost == [1003]
    assert (result.duplicates, result.duplicate_handlings) == (2, 2)
    assert result.duplicates_near == {"#1 x": 1}
    assert result.duplicates_unexplained == [1002]
    assert result.dead_missing == [] and result.dead_unexpected == [] and result.dead_foreign == 1
    assert result.recorded_not_produced == 1
    assert result.pubsub_received == 1


def test_reconcile_names_missing_and_unexpected_dead_letters() -> None:
    produced = produced_set(["fail", "fail", "ok"])
    result = soak.reconcile(produced, [rec(1003, 104.0)], [1001, 1003], [])
    assert result.dead_missing == [1002]
    assert result.dead_unexpected == [1003]
    assert result.lost == []


def test_reconcile_splits_latency_into_quiet_and_fault_phases() -> None:
    produced = produced_set(["ok"] * 4)  # enqueued at 101, 102, 103, 104
    records = [rec(1001, 101.01), rec(1002, 102.02), rec(1003, 108.0), rec(1004, 104.04)]
    result = soak.reconcile(produced, records, [], [Window(105.0, 107.0, "#1 blackhole")])
    assert result.latency["quiet"]["count"] == 3
    assert result.latency["fault"]["count"] == 1
    assert result.latency["fault"]["p99"] == pytest.approx(5.0)
    assert result.latency["quiet"]["max"] == pytest.approx(0.04)
    assert result.latency["all"]["count"] == 4


def test_lost_pubsub_messages_are_attributed_to_the_fault_they_were_published_in() -> None:
    seen = {1: 10.0, 2: 11.0, 5: 30.0, 6: 31.0, 8: 50.0}  # 3, 4 lost in the fault, 7 outside
    by_fault, outside = soak.pubsub_losses(8, seen, [Window(12.0, 25.0, "#1 blackhole")])
    assert by_fault == {"#1 blackhole": 2}
    assert outside == 1


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert soak.percentile(values, 50) == 50
    assert soak.percentile(values, 99) == 99
    assert soak.percentile([], 50) is None


# ---------------------------------------------------------------------------- leak slopes
def series(minutes: float, per_minute: float, noise: float = 0.3) -> list[tuple]:
    out = []
    for i in range(int(minutes * 30)):  # a sample every 2 s
        t = i * 2.0
        wobble = noise if i % 3 == 0 else -noise if i % 3 == 1 else 0.0
        out.append((t, 42, 50.0 + per_minute * t / 60.0 + wobble, 12.0))
    return out


def test_a_flat_noisy_process_is_no_leak() -> None:
    verdict = soak.judge_process(series(10, 0.0), LeakPolicy())
    assert verdict["judged"] and not verdict["leak"]


def test_a_steady_rss_growth_is_a_leak() -> None:
    verdict = soak.judge_process(series(10, 1.0), LeakPolicy())  # 60 MB/h
    assert verdict["judged"] and verdict["leak"]
    assert verdict["rss_mb"]["slope_per_hour"] == pytest.approx(60, rel=0.05)


def test_a_short_window_is_not_judged_and_a_one_off_step_is_no_leak() -> None:
    assert not soak.judge_process(series(0.5, 5.0), LeakPolicy())["judged"]
    step = [(t, pid, rss + (8.0 if t > 300 else 0.0), fds) for t, pid, rss, fds in series(10, 0)]
    assert not soak.judge_process(step, LeakPolicy())["leak"]


def test_growing_open_fds_are_a_leak_and_the_longest_incarnation_is_judged() -> None:
    fds = [(t, 42, rss, 12.0 + t / 20.0) for t, _, rss, _ in series(10, 0.0)]
    earlier = [(t - 1000.0, 7, 80.0 + t, 9.0) for t, _, _, _ in series(1, 0.0)]
    verdict = soak.judge_process(earlier + fds, LeakPolicy())
    assert verdict["pid"] == 42 and verdict["incarnations"] == 2
    assert verdict["leak"] and verdict["fds"]["leak"] and not verdict["rss_mb"]["leak"]


# ---------------------------------------------------------------------------- logs and faults
SUPERVISORD_LOG = """\
2026-01-02 03:04:05,100 INFO spawned: 'consumer_00' with pid 10
2026-01-02 03:04:15,250 WARN exited: consumer_00 (terminated by SIGKILL; not expected)
2026-01-02 03:04:15,300 INFO spawned: 'consumer_00' with pid 11
2026-01-02 03:05:00,000 WARN exited: consumer_01 (exit status 70; not expected)
2026-01-02 03:05:01,000 WARN exited: consumer_01 (terminated by SIGABRT (core dumped); not expected)
2026-01-02 03:06:00,000 INFO stopped: consumer_00 (exit status 0)
"""


def test_supervisord_log_gives_spawns_exits_and_reasons() -> None:
    events = soak.parse_supervisord_log(SUPERVISORD_LOG.splitlines())
    assert [e.event for e in events] == [
        "spawned",
        "exited",
        "spawned",
        "exited",
        "exited",
        "stopped",
    ]
    assert events[0].pid == 10
    assert events[1].detail == "terminated by SIGKILL; not expected"
    assert events[4].detail == "terminated by SIGABRT (core dumped); not expected"
    assert events[1].t - events[0].t == pytest.approx(10.15)


def test_json_log_events_are_filtered_by_name_with_utc_times() -> None:
    lines = [
        '{"event": "redis.disconnected", "timestamp": "2026-01-02T03:04:05.500000Z"}',
        '{"event": "task.done", "timestamp": "2026-01-02T03:04:06Z"}',
        "not json redis.disconnected",
    ]
    found = soak.parse_json_events(lines, ["redis.disconnected"])
    assert len(found) == 1
    assert found[0][0] == pytest.approx(1767323045.5)


def evidence() -> Evidence:
    from array import array

    ev = Evidence(consumers=["consumer_00", "consumer_01"])
    ev.disconnects = [101.5, 102.0]
    ev.handled = {
        "consumer_00": (array("d", [99.0, 108.0, 120.0]), array("q", [1, 1, 2])),
        "consumer_01": (array("d", [99.5, 109.0]), array("q", [3, 3])),
    }
    return ev


def test_a_link_fault_is_detected_by_the_first_disconnect_and_recovered_by_every_consumer() -> None:
    specs = soak.fault_specs(True, soak.Timings())
    run = FaultRun(0, "blackhole", "", {}, 100.0, started=100.0, ended=106.0)
    result = soak.evaluate_fault(run, specs["blackhole"], evidence(), origin=90.0)
    assert result["ok"], result
    assert result["detected_after_s"] == 1.5
    assert result["recovered_after_s"] == 3.0  # consumer_01 handled again at 109
    slow = FaultRun(0, LATENCY, "", {}, 100.0, started=100.0, ended=110.0)
    assert not soak.evaluate_fault(slow, specs[LATENCY], evidence(), origin=90.0)["ok"]


def test_a_killed_consumer_recovers_when_its_new_process_handles_a_task() -> None:
    specs = soak.fault_specs(True, soak.Timings())
    ev = evidence()
    ev.exits = [ProcessEvent(107.0, "exited", "consumer_00", "terminated by SIGKILL")]
    run = FaultRun(0, CONSUMER_KILL, "consumer_00", {}, 107.0, 107.0, 107.0, old_pid=1)
    result = soak.evaluate_fault(run, specs[CONSUMER_KILL], ev, origin=90.0)
    assert result["ok"] and result["recovered_after_s"] == 13.0  # pid 2 at 120, not pid 1 at 108
    frozen = FaultRun(1, CONSUMER_STOP, "consumer_00", {}, 100.0, 100.0, None, old_pid=1)
    result = soak.evaluate_fault(frozen, specs[CONSUMER_STOP], ev, origin=90.0)
    assert not result["ok"] and "never detected" in result["why"]


def test_poison_tasks_recover_once_all_are_dead_lettered() -> None:
    specs = soak.fault_specs(True, soak.Timings())
    ev = evidence()
    ev.dead_at = {5: 103.0, 6: 104.0}
    burst = FaultRun(0, FAIL_BURST, "", {}, 100.0, 100.0, 100.0, ids=[5, 6])
    assert soak.evaluate_fault(burst, specs[FAIL_BURST], ev, 90.0)["recovered_after_s"] == 4.0
    burst.ids = [5, 6, 7]
    assert not soak.evaluate_fault(burst, specs[FAIL_BURST], ev, 90.0)["ok"]


def test_restarts_are_explained_by_the_fault_meant_to_cause_them_first() -> None:
    specs = soak.fault_specs(True, soak.Timings())
    runs = [
        FaultRun(0, "blackhole", "", {}, 100.0, started=100.0, ended=106.0),
        FaultRun(1, HANG, "", {}, 110.0, started=110.0, ended=110.0, ids=[9]),
        FaultRun(2, CONSUMER_KILL, "consumer_01", {}, 200.0, 200.0, 200.0, old_pid=4),
    ]
    exits = [
        ProcessEvent(104.0, "exited", "consumer_00", "exit status 70; not expected"),
        ProcessEvent(115.0, "exited", "consumer_01", "exit status 70; not expected"),
        ProcessEvent(200.1, "exited", "consumer_01", "terminated by SIGKILL; not expected"),
        ProcessEvent(300.0, "exited", "consumer_00", "exit status 70; not expected"),
        ProcessEvent(400.0, "exited", "consumer_00", "exit status 0"),
    ]
    rows = soak.explain_exits(exits, runs, {1: {"recovered_at": 130.0}}, specs, until=350.0)
    assert [r["explained_by"] for r in rows] == [
        "during #1 blackhole",
        "#2 hang: stall detector (--task-timeout)",
        "#3 consumer-kill consumer_01: kill -9 by the soak",
        None,
    ]
    assert [r["collateral"] for r in rows] == [True, False, False, False]


# ---------------------------------------------------------------------------- conf and handler
def test_the_soak_stack_is_built_from_the_shipped_supervisord_conf() -> None:
    text = soak.build_supervisord_conf(
        (ROOT / "conf" / "supervisord.conf").read_text(),
        proxy_url="redis://127.0.0.1:40001/0",
        redis_port=40002,
        metrics_prefix=401,
        subscriber_metrics=40003,
        watchdog_metrics=40004,
        web_port=40005,
        handler="tools.soak.handler:handle_lossy",
        consumers=3,
        grace=2,
        consumer_args=("--prefetch", "20", "--concurrency", "4"),
    )
    sections = dict((name, "".join(lines)) for name, lines in soak.conf_sections(text))
    assert 'TASKD_REDIS_URL="redis://127.0.0.1:40001/0"' in sections["supervisord"]
    assert "autostart=false" in sections["program:redis"]
    assert "autostart=false" in sections["program:web"]
    consumer = sections["program:consumer"]
    assert "--handler tools.soak.handler:handle_lossy --prefetch 20 --concurrency 4 " in consumer
    assert "numprocs=3" in consumer
    assert "--metrics-port 401%(process_num)02d" in consumer
    assert "--handler tools.soak.handler:handle " in sections["program:subscriber"]
    assert "--grace 2 " in sections["eventlistener:watchdog"]
    settings = "".join(line for line in text.splitlines(True) if not line.startswith(";"))
    for shipped in ("16379", "18650", "18690", ":8000", " 186%"):
        assert shipped not in settings, shipped


def test_handler_records_each_outcome_and_the_lossy_variant_drops_every_100th(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(soak_handler.RECORDS_ENV, str(tmp_path))
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "consumer_07")
    soak_handler.handle(b'{"id": 17, "t": 1.5, "kind": "ok"}')
    with pytest.raises(RuntimeError, match="designed to fail"):
        soak_handler.handle(b'{"id": 18, "t": 1.5, "kind": "fail"}')
    soak_handler.handle(b'{"p": 3, "t": 2.0}')
    soak_handler.handle_lossy(b'{"id": 200, "t": 1.5, "kind": "ok"}')  # dropped, "acked"
    soak_handler.handle_lossy(b'{"id": 201, "t": 1.5, "kind": "ok"}')
    with pytest.raises(soak_handler.NotASoakTask):
        soak_handler.handle(b"hello")  # a foreign task fails: dead letter, not eaten
    (path,) = tmp_path.glob("consumer_07.*.rec")
    records = [soak.parse_record(line) for line in path.read_text().splitlines()]
    assert [(r.id, r.outcome, r.worker) for r in records if r] == [
        ("17", "ok", "consumer_07"),
        ("18", "fail", "consumer_07"),
        ("p3", "msg", "consumer_07"),
        ("201", "ok", "consumer_07"),
    ]
    assert records[0] and records[0].enqueued == 1.5 and records[0].pid == os.getpid()


# ---------------------------------------------------------------------------- real runs
@pytest.mark.timeout(240)
def test_short_ci_soak_with_every_fault_kind_loses_nothing_and_passes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = run_soak(
        "--duration", "90s", "--compressed", "--rate", "50", "--run-dir", str(run_dir),
        "--faults", ",".join(CI_KINDS),
        timeout=220,
    )  # fmt: skip
    took = time.monotonic() - started
    doc = report(run_dir)
    failed = [f for f in doc["faults"] if not f["ok"]]
    assert proc.returncode == 0, (proc.stderr[-3000:], doc["verdict"], failed)
    assert doc["verdict"]["status"] == "PASS"
    assert doc["tasks"]["lost_count"] == 0 and doc["tasks"]["done"] > 4000
    assert sorted(f["kind"] for f in doc["faults"]) == sorted(CI_KINDS)
    assert all(f["ok"] and f["recovered_after_s"] is not None for f in doc["faults"])
    assert doc["tasks"]["dead_letters_as_designed"]
    for name in ("report.md", "supervisord.log", "consumer_00.log", "watchdog.log"):
        assert list(run_dir.rglob(name)), name
    assert (run_dir / "report.md").read_text().startswith("# Soak report: PASS")
    assert not leftovers(run_dir), "processes left behind"
    assert took < 150, f"the CI soak took {took:.0f}s"


@pytest.mark.timeout(120)
def test_self_test_a_handler_that_drops_every_100th_task_fails_the_verdict(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = run_soak(
        "--duration", "20s", "--faults", "none", "--rate", "50", "--run-dir", str(run_dir),
        "--handler", "tools.soak.handler:handle_lossy",
        timeout=100,
    )  # fmt: skip
    doc = report(run_dir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert doc["verdict"]["status"] == "FAIL"
    lost = doc["tasks"]["lost"]
    assert doc["tasks"]["lost_count"] >= 5 and all(i % 100 == 0 for i in lost)
    assert doc["tasks"]["lost_where"] == {"nowhere": doc["tasks"]["lost_count"]}
    assert not next(c for c in doc["verdict"]["checks"] if c["check"] == "nothing lost")["ok"]


@pytest.mark.timeout(150)
def test_attach_to_a_running_stack_injects_faults_and_leaves_it_running(tmp_path: Path) -> None:
    stack = soak.OwnedStack(tmp_path / "stack", 2, soak.DEFAULT_HANDLER, soak.Timings())
    try:
        stack.start()
        assert stack.proxy is not None
        soak.wait_ready(stack, soak.DEFAULT_QUEUE, soak.DEFAULT_CHANNEL, 60)
        run_dir = tmp_path / "run"
        proc = run_soak(
            "--attach", "--supervisor-conf", str(stack.conf), "--redis-url", stack.redis_url,
            "--records-dir", str(stack.records_dir),
            "--proxy-control", stack.proxy.base.removeprefix("http://"),
            "--duration", "30s", "--compressed", "--rate", "50",
            "--faults", "consumer-kill,reset,fail-burst", "--run-dir", str(run_dir),
            timeout=120,
        )  # fmt: skip
        doc = report(run_dir)
        assert proc.returncode == 0, (proc.stderr[-3000:], doc["verdict"], doc["faults"])
        assert {f["kind"] for f in doc["faults"]} == {"consumer-kill", "fail-burst", "reset"}
        assert doc["run"]["attached"] and (run_dir / "var" / "log" / "supervisord.log").exists()
        assert all(stack.pid_of(name) for name in stack.consumers), "the stack keeps running"
    finally:
        stack.teardown()
    assert not pids_mentioning(str(tmp_path / "stack"))


@pytest.mark.timeout(120)
def test_interrupted_soak_stops_every_process_and_still_reports(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--duration", "5m", "--faults", "none", "--rate", "50",
         "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )  # fmt: skip
    try:
        wait_until(lambda: (run_dir / "records").exists() and pids_mentioning(str(run_dir)),
                   60, "the soak stack running")  # fmt: skip
        wait_until(lambda: (run_dir / "produced.tsv").stat().st_size > 0, 30, "tasks produced")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not leftovers(run_dir), "processes left behind"
    doc = report(run_dir)
    assert doc["verdict"]["status"] == "INTERRUPTED"
    assert doc["run"]["interrupted_by"] == "SIGINT"


def test_progress_is_one_line_rewritten_on_a_tty_and_log_lines_otherwise() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        line = soak.ProgressLine(stream, interval=0.0)
        line.update("00:01/01:30 produced 50 done 49", force=True)
        line.update("00:02/01:30 produced 100 done 99", force=True)
        line.finish()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().count("\n") == 1
    assert log.getvalue().count("\n") == 2 and "\r" not in log.getvalue()
