"""`scripts/bench_cluster.py` runs end to end at a tiny size, so the scale-out bench cannot rot;
and the harness's hand-formed clusters (fewer than 3 primaries, given slots) work.

No threshold is asserted (a shared CI machine gives noisy numbers): every drain must report
every task drained, and the script must stop everything it started, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from conftest import ROOT
from tools.harness import cluster_form
from tools.harness.cluster import RedisCluster

SCRIPT = str(ROOT / "scripts" / "bench_cluster.py")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_scale_out_bench_drains_every_task_over_one_and_two_primaries() -> None:
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--tasks", "2000", "--repeat", "1", "--primaries", "1,2",
         "--prefetch", "100", "--json"],
        capture_output=True, text=True, timeout=90, cwd=str(ROOT), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(json.dumps(result["table"], indent=1))  # the numbers, in the CI log
    ran = {(r["layout"], r["primaries"]) for r in result["runs"]}
    assert ran == {("per-shard", 1), ("per-shard", 2), ("shards", 1), ("shards", 2)}, ran
    for run in result["runs"]:
        assert run["drained"] == 2000 and run["tasks_per_s"] > 0, run
        assert run["cpu"]["servers_s"] >= 0 and run["cpu"]["consumers_s"] > 0, run
    assert [r["ratio"] for r in result["table"] if r["primaries"] == 1] == [1.0] * len(
        {(r["layout"], r["prefetch"]) for r in result["table"]}
    )


def test_ctrl_c_stops_every_server_and_consumer_and_exits_130() -> None:
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--tasks", "400000", "--repeat", "1", "--primaries", "1",
         "--layout", "per-shard"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "cluster of 1 primary up: ..." once it is formed
        assert "cluster of 1 primary up" in line, line
        time.sleep(1.0)  # into the preload or the drain
        children = descendants(proc.pid)
        assert children, "no redis-server or consumer started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1, err
    assert not [pid for pid in children if alive(pid)], children


def test_a_hand_formed_cluster_puts_given_slots_on_given_primaries(tmp_path: Path) -> None:
    keys = ["{a:0}", "{a:1}", "{a:2}"]
    cluster = RedisCluster(tmp_path, primaries=2, replicas=1, slots=cluster_form.spread(keys, 2))
    try:
        cluster.start()
        assert [cluster.node_of(k).port for k in keys] == [
            cluster.primary(0).port, cluster.primary(1).port, cluster.primary(0).port,
        ]  # fmt: skip
        roles = [n.client().execute_command("ROLE")[0] for n in cluster.nodes]
        assert roles == [b"master", b"master", b"slave", b"slave"], roles
        moved = cluster_form.slot_of("{b}")
        target = 1 - [n.port for n in cluster.nodes].index(cluster.node_of("{b}").port)
        cluster.place({moved: target})
        assert cluster.node_of("{b}").port == cluster.primary(target).port
        client = cluster.client()
        try:
            client.set("{b}", "here")
            assert cluster.primary(target).client().get("{b}") == b"here"
        finally:
            client.close()
    finally:
        cluster.stop()
    with contextlib.suppress(redis.RedisError):
        assert not cluster.primary(0).ping()
    assert not any(n.pid for n in cluster.nodes), os.listdir(tmp_path)


def test_a_run_that_cannot_start_exits_1_with_one_line() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}  # no redis-server to start
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--tasks", "100", "--repeat", "1", "--primaries", "1"],
        capture_output=True, text=True, timeout=30, cwd=str(ROOT), env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench-cluster failed: "), lines
