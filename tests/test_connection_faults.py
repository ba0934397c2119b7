"""No silent hang: every network or server fault is detected, waited out, and nothing is lost.

Each test injects a real fault (refused connections, restarts, CLIENT KILL, a black hole in a
TCP proxy, a frozen server, LOADING, a replica promotion) while tasks are pushed, and checks
the contractual deadlines and that every pushed task is done.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import (
    Daemon,
    DaemonFactory,
    RedisServer,
    blocked_claims,
    free_port,
    stays_true,
    wait_until,
)
from tools.chaos_proxy import ChaosProxy
from tools.harness import Producer

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "jobs"
# Short test timings; the contract scales with them: detection within block + margin + 2 s,
# flow again within backoff cap + 2 s.
BLOCK, SOCKET, CAP = 1.0, 2.0, 0.5
FAST = (
    "--block-timeout",
    str(BLOCK),
    "--socket-timeout",
    str(SOCKET),
    "--backoff-cap",
    str(CAP),
    "--connect-timeout",
    "1",
    "--stall-timeout",
    "30",
)


def all_done(taskd: DaemonFactory, bodies: list[str]) -> bool:
    return set(bodies) <= set(taskd.done_bodies())


def wait_flowing_again(taskd: DaemonFactory, producer: Producer, count: int = 5) -> None:
    """Wait until `count` tasks pushed from now on are done: the flow is back."""
    mark = len(producer.pushed)
    wait_until(
        lambda: (
            len(producer.pushed) >= mark + count
            and all_done(taskd, producer.pushed[mark : mark + count])
        ),
        15,
        f"{count} tasks pushed after the fault done",
    )


def alive(daemon: Daemon) -> Callable[[], bool]:
    return lambda: daemon.proc.poll() is None


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that persists every write (AOF, fsync always), so kill -9 loses nothing."""
    server = RedisServer(tmp_path / "aof", aof=True)
    server.start()
    yield server
    server.stop()


def test_connection_refused_at_start_waits_then_consumes(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = RedisServer(tmp_path / "late")
    server.workdir.mkdir()
    daemon = taskd.consume(server.url, "--queue", Q, *HANDLER, *FAST)
    daemon.wait_for_event("redis.disconnected", 10)
    stays_true(alive(daemon), 1.0, "taskd waiting for Redis")  # it keeps waiting, no exit
    assert daemon.proc.poll() is None
    server.start()
    try:
        started = time.monotonic()
        server.client().lpush(Q, "first")
        wait_until(lambda: taskd.done_bodies() == ["first"], CAP + 2 + 1, "the first task")
        assert time.monotonic() - started < CAP + 2 + 1
        assert len(daemon.events("redis.disconnected")) == 1  # logged once, not per attempt
        assert daemon.events("redis.reconnected")
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["clean", "kill9"])
def test_redis_restart_loses_no_task(
    aof_server: RedisServer, taskd: DaemonFactory, how: str
) -> None:
    daemon = taskd.consume(aof_server.url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1")
    producer = Producer(aof_server.port, Q)
    producer.start()
    wait_until(lambda: len(taskd.done_bodies()) >= 10, 15, "tasks flowing")
    aof_server.stop() if how == "clean" else aof_server.kill9()
    daemon.wait_for_event("redis.disconnected", BLOCK + SOCKET + 2)
    stays_true(alive(daemon), 1.0, "taskd riding out the outage")  # the outage: 1 s more
    aof_server.start()
    back = time.monotonic()
    daemon.wait_for_event("redis.reconnected", CAP + 2 + 1)
    assert time.monotonic() - back < CAP + 2 + 1
    wait_flowing_again(taskd, producer)
    pushed = producer.finish()
    wait_until(lambda: all_done(taskd, pushed), 20, f"all {len(pushed)} pushed tasks done")
    assert len(daemon.events("redis.disconnected")) == 1
    assert daemon.proc.poll() is None


def test_a_killed_claim_connection_is_replaced_and_no_task_is_lost(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(redis_server.url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1")
    producer = Producer(redis_server.port, Q)
    producer.start()
    wait_until(lambda: len(taskd.done_bodies()) >= 5, 15, "tasks flowing")
    admin = redis_server.client()

    def claim_ids() -> set[int]:
        return {int(c["id"]) for c in admin.client_list() if c["name"] == "taskd-claim:w1"}

    before = wait_until(claim_ids, 5, "the consumer's claim connection")
    killed = admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 1
    # a new claim connection (the error may surface, or redis-py may find the socket closed
    # before reusing it); either way the consumer goes on with a fresh connection
    wait_until(lambda: (ids := claim_ids()) and not ids & before, CAP + 2 + 2, "a new connection")
    wait_flowing_again(taskd, producer)
    pushed = producer.finish()
    wait_until(lambda: all_done(taskd, pushed), 15, "all pushed tasks done")


def test_blackholed_connection_is_detected_and_recovered_with_default_timeouts(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """The headline failure: a half-open flow. Defaults: block 5 s, socket 10 s, cap 5 s."""
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        daemon = taskd.consume(
            url,
            "--queue",
            Q,
            *HANDLER,
            "--block-timeout",
            "5",
            "--backoff-cap",
            "5",
            "--worker-id",
            "w1",
        )
        redis_server.client().lpush(Q, "before")
        wait_until(lambda: taskd.done_bodies() == ["before"], 10, "a task before the fault")
        wait_until(lambda: blocked_claims(redis_server.client(), "w1"), 5, "idle in BLMOVE")
        proxy.set_mode("blackhole")
        holed = time.monotonic()
        # pushed during the black hole: the server may hand it to the dead flow's claim
        redis_server.client().lpush(Q, "during")
        daemon.wait_for_event("redis.disconnected", 5 + 5 + 2 + 1)
        assert time.monotonic() - holed <= 5 + 5 + 2, "detected within block + margin + 2 s"
        stays_true(alive(daemon), 3, "taskd under the black hole")  # reconnects black-holed too
        proxy.set_mode("pass")
        lifted = time.monotonic()
        redis_server.client().lpush(Q, "after")
        wait_until(lambda: all_done(taskd, ["during", "after"]), 5 + 2 + 1, "tasks after lift")
        assert time.monotonic() - lifted <= 5 + 2 + 0.5, "flowing within backoff cap + 2 s"
        assert daemon.proc.poll() is None


def test_lost_claim_reply_is_reconciled_without_waiting_for_death(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """The server moves a task into our list for a claim whose reply never arrives."""
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        daemon = taskd.consume(
            url,
            "--queue",
            Q,
            *HANDLER,
            "--block-timeout",
            "3",
            "--socket-timeout",
            "4",
            "--backoff-cap",
            "0.5",
            "--connect-timeout",
            "1",
            "--worker-id",
            "w1",
            "--recovery-interval",
            "60",  # the periodic check must not be what saves it
        )
        daemon.wait_for_event("redis.connected", 10)
        wait_until(lambda: blocked_claims(redis_server.client(), "w1"), 5, "idle in BLMOVE")
        proxy.set_mode("blackhole")
        redis_server.client().lpush(Q, "orphan")
        client = redis_server.client()
        wait_until(lambda: client.llen(f"{Q}:processing:w1") == 1, 3, "the server-side claim")
        daemon.wait_for_event("redis.disconnected", 3 + 1 + 2 + 1)
        proxy.set_mode("pass")
        wait_until(lambda: taskd.done_bodies() == ["orphan"], 0.5 + 2 + 4 + 1, "orphan done")
        assert daemon.events("claim.reply_lost")


@pytest.mark.parametrize("how", ["sigstop", "debug_sleep"])
def test_a_stalled_server_that_keeps_tcp_alive_is_detected_and_no_task_is_lost(
    redis_server: RedisServer, taskd: DaemonFactory, how: str
) -> None:
    daemon = taskd.consume(redis_server.url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1")
    producer = Producer(redis_server.port, Q, every=0.1)
    producer.start()
    wait_until(lambda: len(taskd.done_bodies()) >= 5, 15, "tasks flowing")
    assert redis_server.proc is not None
    if how == "sigstop":
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        daemon.wait_for_event("redis.disconnected", BLOCK + SOCKET + 2 + 0.5)
        stays_true(alive(daemon), 1.5, "taskd while Redis is frozen")  # frozen 1.5 s more
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    else:
        sleeper = redis.Redis(port=redis_server.port, socket_timeout=30)
        threading.Thread(
            target=lambda: sleeper.execute_command("DEBUG", "SLEEP", 5), daemon=True
        ).start()
        daemon.wait_for_event("redis.disconnected", BLOCK + SOCKET + 2 + 0.5)
    daemon.wait_for_event("redis.reconnected", 10)
    wait_flowing_again(taskd, producer)
    pushed = producer.finish()
    wait_until(lambda: all_done(taskd, pushed), 20, "all pushed tasks done")
    assert daemon.proc.poll() is None


def test_loading_after_restart_is_waited_out(tmp_path: Path, taskd: DaemonFactory) -> None:
    workdir = tmp_path / "loading"
    workdir.mkdir()
    server = RedisServer(workdir, None, "--appendonly", "no")
    server.start()
    try:
        admin = server.client()
        admin.execute_command("DEBUG", "POPULATE", "20000", "filler")
        admin.lpush(Q, "survivor")
        admin.save()
        server.stop()
        # Reloading 20,000 keys with a 100 us per-key delay answers LOADING for about 2 s.
        server.start(
            "--dbfilename",
            "dump.rdb",
            "--key-load-delay",
            "100",
            "--loading-process-events-interval-bytes",
            "1024",
            wait=False,
        )
        daemon = taskd.consume(server.url, "--queue", Q, *HANDLER, *FAST)
        lines = wait_until(
            lambda: [
                e
                for e in daemon.events("redis.disconnected")
                if "LOADING" in e["error"] or "loading" in e["error"].lower()
            ],
            10,
            "a LOADING error",
        )
        assert lines
        wait_until(lambda: taskd.done_bodies() == ["survivor"], 20, "the task after loading")
        assert daemon.proc.poll() is None
    finally:
        server.stop()


def test_a_replica_promotion_unblocks_the_claim_and_readonly_is_waited_out(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    a = RedisServer(tmp_path / "a")
    b = RedisServer(tmp_path / "b")
    for s in (a, b):
        s.workdir.mkdir()
        s.start()
    try:
        b.client().replicaof("127.0.0.1", a.port)
        wait_until(lambda: b.client().info("replication")["master_link_status"] == "up", 10, "sync")
        daemon = taskd.consume(a.url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1")
        a.client().lpush(Q, "one")
        wait_until(lambda: taskd.done_bodies() == ["one"], 10, "first task")
        wait_until(lambda: blocked_claims(a.client(), "w1"), 5, "idle in BLMOVE on A")
        # failover: B becomes master, A its replica -> A unblocks our claim, then READONLY
        b.client().replicaof("no", "one")
        a.client().replicaof("127.0.0.1", b.port)
        lines = daemon.wait_for_event("redis.disconnected", 5)
        assert any(w in lines[0]["error"] for w in ("UNBLOCKED", "READONLY", "read only"))
        b.client().lpush(Q, "two")  # accepted by the new master; A (a replica) gets it too
        stays_true(alive(daemon), 1.0, "taskd against a replica")
        assert daemon.proc.poll() is None
        # and back: A master again, B its replica; the consumer continues without a restart
        a.client().replicaof("no", "one")
        b.client().replicaof("127.0.0.1", a.port)
        daemon.wait_for_event("redis.reconnected", 10)
        wait_until(lambda: taskd.done_bodies() == ["one", "two"], 10, "the task from failover")
    finally:
        a.stop()
        b.stop()


def test_error_while_pushing_a_task_back_keeps_it_in_the_processing_list(
    aof_server: RedisServer, taskd: DaemonFactory
) -> None:
    aof_server.client().lpush(Q, "1.5:precious")
    daemon = taskd.consume(
        aof_server.url,
        "--queue",
        Q,
        "--handler",
        "handlers_for_tests:slow_fail",
        *FAST,
        "--worker-id",
        "w1",
        "--max-attempts",
        "2",
    )
    wait_until(lambda: taskd.records(), 10, "the handler to start")
    aof_server.stop()  # the retry push-back will fail: Redis is gone
    daemon.wait_for_event("redis.disconnected", 5)
    stays_true(alive(daemon), 1.0, "taskd waiting for Redis")  # the outage: 1 s more
    aof_server.start()
    client = aof_server.client()
    wait_until(lambda: client.llen(f"{Q}:dead") == 1, 20, "retried, then dead-lettered")
    entry = json.loads(client.lindex(f"{Q}:dead", 0))
    assert entry["body"] == "1.5:precious" and entry["attempts"] == 2
    starts = [b for _, phase, b in taskd.records() if phase == "start"]
    assert starts == ["1.5:precious", "1.5:precious"]


def _sentinel_conf(path: Path, port: int, master_port: int) -> Path:
    path.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {path.parent}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
        "sentinel parallel-syncs mymaster 1\n"
    )
    return path


def test_sentinel_failover_consumer_follows_the_new_master(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    import shutil
    import subprocess

    master = RedisServer(tmp_path / "m", None, "--appendonly", "yes")
    replica = RedisServer(tmp_path / "r", None, "--appendonly", "yes")
    sentinels: list[subprocess.Popen[bytes]] = []
    for s in (master, replica):
        s.workdir.mkdir()
        s.start()
    try:
        replica.client().replicaof("127.0.0.1", master.port)
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports):
            conf = _sentinel_conf(tmp_path / f"sentinel{i}.conf", port, master.port)
            sentinels.append(
                subprocess.Popen(
                    [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        sentinel_hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        url = f"redis+sentinel://{sentinel_hosts}/mymaster/0"
        for port in ports:
            probe = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
            wait_until(
                lambda p=probe: p.execute_command("SENTINEL", "REPLICAS", "mymaster"),
                15,
                "sentinel sees the replica",
            )
        wait_until(
            lambda: replica.client().info("replication")["master_link_status"] == "up", 10, "sync"
        )
        daemon = taskd.consume(url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1")
        m = master.client()
        for i in range(5):
            m.lpush(Q, f"pre{i}")
        m.wait(1, 2000)
        wait_until(lambda: len(taskd.done_bodies()) == 5, 15, "tasks via sentinel")
        master.kill9()
        wait_until(
            lambda: replica.client().info("replication")["role"] == "master", 30, "promotion"
        )
        for i in range(5):
            replica.client().lpush(Q, f"post{i}")
        wait_until(lambda: len(set(taskd.done_bodies())) == 10, 20, "tasks on the new master")
        assert daemon.events("redis.reconnected")
        assert daemon.proc.poll() is None
    finally:
        for p in sentinels:
            p.kill()
            p.wait(5)
        master.stop()
        replica.stop()


def test_outage_longer_than_the_task_timeout_while_acking_is_waited_out(
    aof_server: RedisServer, taskd: DaemonFactory
) -> None:
    """The handler finished; Redis is gone for longer than --task-timeout: no exit 70."""
    aof_server.client().lpush(Q, "slow:1:finished-before-outage")
    daemon = taskd.consume(
        aof_server.url, "--queue", Q, *HANDLER, *FAST, "--worker-id", "w1", "--task-timeout", "2"
    )
    wait_until(lambda: taskd.records(), 10, "the handler to start")
    aof_server.stop()
    wait_until(lambda: taskd.done_bodies(), 5, "the handler to finish")
    stays_true(alive(daemon), 4, "taskd settling")  # longer than the task timeout, Redis down
    assert daemon.proc.poll() is None, "the stall detector must not fire while settling"
    aof_server.start()
    client = aof_server.client()
    wait_until(lambda: client.llen(f"{Q}:processing:w1") == 0, CAP + 2 + 2, "the ack")
    assert taskd.done_bodies() == ["slow:1:finished-before-outage"]
    assert not daemon.events("watchdog.stall")
