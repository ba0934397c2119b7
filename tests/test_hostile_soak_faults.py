"""The soak's Redis-full (`oom`) and compressed long-outage (`long-outage`) faults: how they are
judged (pure), the producer against a real full Redis (a refused push is "not produced", never
"lost"), and a real compressed soak with just these two faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

from conftest import ROOT, RedisServer, wait_until
from daemon import config
from daemon.keys import QueueKeys
from tools import soak
from tools.harness.memory import make_full, used_memory
from tools.soak import LONG_OUTAGE, OOM, Evidence, FaultRun, ProcessEvent

SCRIPT = str(ROOT / "scripts" / "soak.py")


def evidence(**kw: object) -> Evidence:
    """Two consumers that handled tasks at 99-100 s and again at 131-132 s."""
    ev = Evidence(consumers=["consumer_00", "consumer_01"], **kw)  # type: ignore[arg-type]
    ev.handled = {
        "consumer_00": (array("d", [99.0, 131.0]), array("q", [1, 1])),
        "consumer_01": (array("d", [100.0, 132.0]), array("q", [2, 2])),
    }
    return ev


# ---------------------------------------------------------------------------- long outage, pure
def outage(**kw: object) -> FaultRun:
    return FaultRun(0, LONG_OUTAGE, "", {"attempts": 1500}, 110.0, 110.0, 130.0, **kw)  # type: ignore[arg-type]


def test_a_long_outage_passes_when_every_consumer_reconnects_after_thousands_of_attempts() -> None:
    spec = soak.fault_specs(True, soak.soak_timings([LONG_OUTAGE]))[LONG_OUTAGE]
    ev = evidence(disconnects=[110.5, 110.6])
    ev.reconnects = {"consumer_00": [(130.2, 2400)], "consumer_01": [(130.3, 2380)]}
    result = soak.evaluate_fault(outage(), spec, ev, origin=90.0)
    assert result["ok"], result
    assert result["detected_after_s"] == 0.5 and result["recovered_after_s"] == 2.0
    assert any("consumer_00 2400" in n for n in result["notes"]), result["notes"]


def test_a_consumer_that_exits_during_a_long_outage_fails_it() -> None:
    spec = soak.fault_specs(True, soak.soak_timings([LONG_OUTAGE]))[LONG_OUTAGE]
    ev = evidence(disconnects=[110.5])
    ev.reconnects = {"consumer_00": [(130.2, 2400)], "consumer_01": [(131.5, 30)]}
    ev.exits = [ProcessEvent(121.0, "exited", "consumer_01", "exit status 1; not expected")]
    result = soak.evaluate_fault(outage(), spec, ev, origin=90.0)
    assert not result["ok"]
    assert "consumer_01 exited during the outage (exit status 1" in result["why"]
    assert "consumer_01 made 30 reconnect attempts" in result["why"]


def test_a_long_outage_too_short_or_never_reconnected_fails() -> None:
    spec = soak.fault_specs(True, soak.soak_timings([LONG_OUTAGE]))[LONG_OUTAGE]
    ev = evidence(disconnects=[110.5])
    ev.reconnects = {"consumer_00": [(130.2, 900)]}
    result = soak.evaluate_fault(outage(), spec, ev, origin=90.0)
    assert not result["ok"]
    assert "consumer_01 never logged redis.reconnected" in result["why"]
    assert "consumer_00 made 900 reconnect attempts (< 1100)" in result["why"]
    assert result["recovered_after_s"] is None
    # the live count (from the consumer's metrics) stands in for a log line that says less
    ev.reconnects["consumer_01"] = [(130.4, 1200)]
    assert soak.evaluate_fault(outage(counts={"consumer_00": 1300}), spec, ev, 90.0)["ok"]


def test_only_a_schedule_with_a_long_outage_gets_the_tiny_backoff_and_it_is_valid_config() -> None:
    assert soak.soak_timings([OOM]) == soak.Timings()
    tiny = soak.soak_timings([OOM, LONG_OUTAGE])
    assert tiny.backoff_cap <= 0.01 and tiny.backoff_base <= tiny.backoff_cap
    settings = config.load({}, env={**tiny.env(), "TASKD_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert settings.backoff_cap == tiny.backoff_cap
    # a smaller cap makes the link faults' recovery bound tighter, never looser
    loose = soak.fault_specs(True, soak.Timings())["redis-kill"].recover_bound
    assert soak.fault_specs(True, tiny)["redis-kill"].recover_bound < loose


def test_reconnect_attempts_are_read_from_the_error_counters_of_a_metrics_page() -> None:
    page = (
        "# HELP taskd_redis_errors_total Failed Redis calls\n"
        'taskd_redis_errors_total{kind="ConnectionError"} 1523.0\n'
        'taskd_redis_errors_total{kind="TimeoutError"} 2.0\n'
        'taskd_redis_errors_created{kind="ConnectionError"} 1.7e9\n'
    )
    assert soak.redis_errors_total(page) == 1525
    assert soak.redis_errors_total("") == 0


# ---------------------------------------------------------------------------- oom, pure
def full(ids: list[int]) -> FaultRun:
    counts = {"maxmemory": 2_000_000, "producer_pushes_refused": 312}
    return FaultRun(0, OOM, "", {"backlog": 4}, 110.0, 110.0, 125.0, ids=ids, counts=counts)


def test_oom_passes_when_detected_and_the_backlog_drains_while_redis_is_full() -> None:
    spec = soak.fault_specs(True, soak.Timings())[OOM]
    ev = evidence(out_of_memory=[111.2])
    ev.done_at = {1: 109.9, 2: 112.0, 3: 113.0, 4: 117.5}  # 1 was done before the fill
    result = soak.evaluate_fault(full([1, 2, 3, 4]), spec, ev, origin=90.0)
    assert result["ok"], result
    assert result["detected_after_s"] == 1.2
    assert "3 of 4 backlog task(s) were still queued when Redis became full; 3 handled" in (
        " ".join(result["notes"])
    )
    assert "producer pushes refused: 312" in result["notes"]


def test_oom_fails_when_consumers_stop_draining_or_never_say_redis_is_full() -> None:
    spec = soak.fault_specs(True, soak.Timings())[OOM]
    ev = evidence()
    ev.done_at = {1: 126.0, 2: 126.1}  # drained only after the filler was removed
    result = soak.evaluate_fault(full([1, 2]), spec, ev, origin=90.0)
    assert not result["ok"]
    assert "never detected" in result["why"]
    assert "did not drain a full Redis: 2 of 2" in result["why"]
    ev = evidence(out_of_memory=[111.0])
    ev.done_at = {1: 109.0, 2: 109.5}  # nothing was left to drain under OOM: proves nothing
    assert "nothing drained under OOM" in soak.evaluate_fault(full([1, 2]), spec, ev, 90.0)["why"]


# ---------------------------------------------------------------------------- producer, real Redis
def test_a_push_refused_by_a_full_redis_is_not_produced_and_an_injection_waits_for_room(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    pending_key = QueueKeys("q").pending
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used_memory(client) + 2**20))
    make_full(client, 2 * soak.OOM_CHUNK, soak.OOM_FILLER_KEY, soak.OOM_CHUNK)  # refuses writes now
    producer = soak.Producer(
        redis_server.url, "q", "ch", rate=100, pubsub_rate=0, produced_path=tmp_path / "p.tsv",
        base=1000,
    )  # fmt: skip
    producer.start()
    try:
        wait_until(lambda: producer.push_refused >= 50, 10, "pushes refused")
        injection = producer.inject("fail", 3)
        wait_until(lambda: injection.ids, 10, "the injection taken up")
        errors = producer.push_errors
        wait_until(lambda: producer.push_errors >= errors + 3, 10, "the injection refused")
        assert not injection.pushed.is_set()  # held for a retry, not dropped
        assert len(producer.produced) == 0 and client.llen(pending_key) == 0
        client.delete(soak.OOM_FILLER_KEY)
        assert injection.pushed.wait(10)
        wait_until(lambda: client.llen(pending_key) >= 10, 10, "pushes accepted again")
    finally:
        producer.stop()
    produced = soak.read_produced(tmp_path / "p.tsv", 1000)
    assert sorted(produced.ids_of("fail")) == injection.ids
    pending = {json.loads(b)["id"] for b in client.lrange(pending_key, 0, -1)}
    assert pending == set(produced.ids_of("ok")) | set(injection.ids)
    assert producer.push_refused >= 50  # refused ids are in neither: never produced, not lost


# ---------------------------------------------------------------------------- a real run
@pytest.mark.timeout(180)
def test_compressed_soak_with_redis_full_and_a_long_outage_loses_nothing_and_passes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--compressed", "--faults", "oom,long_outage", "--rate", "50",
         "--duration", "40s", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=170, env=env, cwd=str(ROOT),
    )  # fmt: skip
    took = time.monotonic() - started
    doc = json.loads((run_dir / "report.json").read_text())
    faults = {f["kind"]: f for f in doc["faults"]}
    assert proc.returncode == 0, (proc.stderr[-3000:], doc["verdict"], doc["faults"])
    assert doc["verdict"]["status"] == "PASS" and doc["tasks"]["lost_count"] == 0
    assert set(faults) == {OOM, LONG_OUTAGE}
    assert doc["tasks"]["push_refused"] > 0  # Redis really was full under load
    assert not doc["restarts"]["exits"], doc["restarts"]  # nobody exited, through both
    assert "still queued when Redis became full" in " ".join(faults[OOM]["notes"])
    assert doc["run"]["timings"]["backoff_cap"] <= 0.01
    assert took < 120, f"took {took:.0f}s"
