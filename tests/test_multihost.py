"""Many hosts, one Redis, tested as two hosts (issue 14).

Two hosts on this machine (tools/harness/hosts.py): network namespaces with their own addresses
on veth pairs where we may create them, else loopback addresses each behind its own chaos proxy;
each host's processes see their own hostname. Consumers on both run with the DEFAULT worker id
(`<hostname>:<machine tag>:<pid>`, daemon/worker_id.py), fed by the harness producer throughout:

1. both hosts drain one queue together: nothing lost, nothing run twice;
2. one host's link is cut (a black hole): the other host recovers its tasks within heartbeat
   TTL + recovery interval + one task and one claim, nothing is lost, and when the link comes
   back the cut host's consumers (never exited) take their ids back and carry on;
3. the hosts' wall clocks are 20 minutes apart (one 10 min behind, one 10 min ahead): no live
   worker is taken for dead, since heartbeat expiry is a Redis TTL, not a comparison of clocks;
4. two containers sharing one host's network and hostname, each consumer pid 1: their default
   ids differ (by PID namespace) and both consume at once (nothing lost or doubled);
5. two hosts with one hostname (cloned VMs given new machine ids), each running supervisord's
   `consumer_00`: their default ids differ (by machine id) and both consume at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Daemon, DaemonFactory, RedisServer, stays_true, wait_until
from daemon.worker_id import is_machine_id, local_machine_tag, machine_tag
from handlers_for_tests import RECORD_ENV, read_records
from tools.harness import Producer
from tools.harness.hosts import (
    PID_NAMESPACE,
    Host,
    Hosts,
    hostnames_available,
    inner_pid,
    machine_ids_available,
)

QUEUE = "mh"
BLOCK = 0.5  # --block-timeout: heartbeat TTL 1.5 s (3 x), recovery interval 1 s (2 x)
TTL, RECOVERY_INTERVAL = 3 * BLOCK, 2 * BLOCK


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Hosts, RedisServer]]:
    """Two hosts and one Redis both reach (and whose admin side is 127.0.0.1)."""
    two = Hosts(tmp_path, ROOT)
    server = RedisServer(tmp_path / "redis", None, *two.redis_args())
    try:
        server.start()
        two.connect(server.port)
        yield two, server
    finally:
        server.stop()
        two.close()


def start_consumers(
    taskd: DaemonFactory,
    host: Host,
    n: int,
    *args: str,
    wall_offset: float = 0.0,
    **env: str,
) -> list[Daemon]:
    """`n` consumers on `host`, default worker ids, once each has said it started."""
    started = [
        taskd.consume(
            host.url,
            "--queue",
            QUEUE,
            "--handler",
            "handlers_for_tests:record",
            *args,
            **host.env(wall_offset),
            **env,
        )
        for _ in range(n)
    ]
    for daemon in started:
        daemon.wait_for_event("consumer.started", 20)
    return started


def worker_of(daemon: Daemon) -> str:
    return str(daemon.events("consumer.started")[0]["worker"])


def tag_of(pid: int, machine_id: str = "") -> str:
    """The machine tag process `pid` derives (seen from outside; `machine_id`: what it reads
    in /etc/machine-id, "" for this machine's own)."""
    machine_id = machine_id or Path("/etc/machine-id").read_text().strip()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert is_machine_id(machine_id)
    return machine_tag(machine_id, os.readlink(f"/proc/{pid}/ns/pid"), boot)


def pids(daemons: list[Daemon]) -> set[str]:
    return {str(d.pid) for d in daemons}


def runs(taskd: DaemonFactory, phase: str = "done") -> Counter[str]:
    return Counter(body for _, ph, body in taskd.records() if ph == phase)


def events(daemons: list[Daemon], name: str) -> list[dict[str, object]]:
    return [line for d in daemons for line in d.events(name)]


def stop_all(daemons: list[Daemon]) -> None:
    """SIGTERM each: every one drains and exits 0 (none exited on its own before)."""
    assert [d.proc.poll() for d in daemons] == [None] * len(daemons)
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    assert [d.wait(15) for d in daemons] == [0] * len(daemons)


def test_default_worker_ids_name_the_host_and_both_hosts_drain_one_queue(
    taskd: DaemonFactory, hosts: tuple[Hosts, RedisServer]
) -> None:
    two, server = hosts
    a, b = two.hosts
    on_a, on_b = start_consumers(taskd, a, 2), start_consumers(taskd, b, 2)
    admin = server.client()

    # default ids: <the host's own hostname>:<this machine's tag>:<pid>, and the owner record
    # names that host
    ids = {worker_of(d): (host, d) for host, ds in ((a, on_a), (b, on_b)) for d in ds}
    assert set(ids) == {f"{h.hostname}:{local_machine_tag()}:{d.pid}" for h, d in ids.values()}
    assert len(ids) == 4  # distinct: by hostname, and by pid where hosts could not be renamed
    wait_until(
        lambda: {w.decode() for w in admin.zrange(f"{QUEUE}:workers", 0, -1)} == set(ids),
        10,
        "all four workers registered",
    )
    for worker, (host, _) in ids.items():
        record = json.loads(admin.get(f"{QUEUE}:alive:{worker}"))
        assert record["host"] == host.hostname

    producer = Producer(server.port, QUEUE, every=0.01, prefix="base")
    producer.start()
    wait_until(lambda: len(producer.pushed) >= 150, 20, "150 tasks pushed")
    pushed = producer.finish()
    wait_until(lambda: set(pushed) <= set(runs(taskd)), 20, "every pushed task done")

    done, started = runs(taskd), runs(taskd, "start")
    assert [b for b, n in started.items() if n > 1] == []  # nothing ran twice without a fault
    assert set(done) == set(pushed)
    by_host = Counter(
        "a" if p in pids(on_a) else "b" for p, ph, _ in taskd.records() if ph == "done"
    )
    assert by_host["a"] > 0 and by_host["b"] > 0, by_host  # both hosts did the work
    assert events(on_a + on_b, "recovery.dead_worker") == []
    stop_all(on_a + on_b)
    assert admin.llen(f"{QUEUE}:dead") == 0


def test_a_cut_host_is_recovered_by_the_other_within_the_bound_and_carries_on_after(
    taskd: DaemonFactory, hosts: tuple[Hosts, RedisServer]
) -> None:
    two, server = hosts
    a, b = two.hosts
    fast = ("--socket-timeout", "2", "--connect-timeout", "1")
    on_a, on_b = start_consumers(taskd, a, 2, *fast), start_consumers(taskd, b, 2, *fast)
    workers_a = [worker_of(d) for d in on_a]
    admin = server.client()

    def held_by_a() -> list[str]:
        return [
            t.decode() for w in workers_a for t in admin.lrange(f"{QUEUE}:processing:{w}", 0, -1)
        ]

    task = 0.4  # seconds per task: a host's consumers hold work most of the time
    producer = Producer(server.port, QUEUE, every=0.15, prefix=f"slow:{task}:c")
    producer.start()
    wait_until(
        lambda: len(pids(on_a) & {p for p, _, _ in taskd.records()}) == 2,
        15,
        "both of host-a's consumers at work",
    )
    wait_until(held_by_a, 10, "host-a holding tasks")
    a.cut()
    cut_at = time.monotonic()
    held = held_by_a()  # what host-a holds in Redis now: it cannot change it from behind the cut
    assert held, "host-a held nothing at the cut"

    # the other host takes host-a's tasks back (the heartbeat expired) and runs them
    wait_until(lambda: not held_by_a(), 15, "host-a's processing lists recovered")
    recovered_after = time.monotonic() - cut_at
    b_pids = pids(on_b)
    wait_until(
        lambda: all(
            any(p in b_pids and body == t for p, ph, body in taskd.records() if ph == "start")
            for t in held
        ),
        15,
        "host-b running them",
    )
    picked_up_after = time.monotonic() - cut_at
    # documented bound: heartbeat TTL + recovery interval (+ the recoverer's task in hand and
    # one claim); 1.5 s slack for a loaded 2-core machine
    bound = TTL + RECOVERY_INTERVAL + task + BLOCK + 1.5
    assert recovered_after <= bound and picked_up_after <= bound, (recovered_after, picked_up_after)
    dead_workers = {str(e["dead_worker"]) for e in events(on_b, "recovery.dead_worker")}
    assert dead_workers <= set(workers_a) and dead_workers, dead_workers
    # behind the cut, each of host-a's consumers finds its Redis gone (its next command's
    # socket timeout) and stays, waiting for it
    wait_until(lambda: all(d.events("redis.disconnected") for d in on_a), 10, "host-a cut off")
    outage = time.monotonic() - cut_at
    assert [d.proc.poll() for d in on_a] == [None, None]

    a.restore()
    restored = len(taskd.records())
    for daemon in on_a:  # each reconnects, takes its id back and carries on
        daemon.wait_for_event("redis.reconnected", 15)
        wait_until(
            lambda d=daemon: any(
                p == str(d.pid) and ph == "done" for p, ph, _ in taskd.records()[restored:]
            ),
            15,
            f"host-a consumer {daemon.pid} working again",
        )
    wait_until(
        lambda: all(admin.exists(f"{QUEUE}:alive:{w}") for w in workers_a),
        10,
        "host-a's heartbeats back",
    )
    pushed = producer.finish()
    wait_until(lambda: set(pushed) <= set(runs(taskd)), 30, "every pushed task done")
    wait_until(lambda: admin.llen(QUEUE) == 0 and not held_by_a(), 10, "queue drained")

    # nothing lost; a task ran twice only if host-a held it when its link was cut
    twice = {body for body, n in runs(taskd, "start").items() if n > 1}
    assert twice <= set(held), (twice, held)
    assert admin.llen(f"{QUEUE}:dead") == 0
    stop_all(on_a + on_b)
    print(
        f"\nmultihost: cut {outage:.2f} s -> recovered {recovered_after:.2f} s, "
        f"-> running on host-b {picked_up_after:.2f} s (bound {bound:.2f} s); "
        f"held {len(held)}, ran twice {len(twice)}"
    )


def test_hosts_twenty_minutes_apart_take_no_live_worker_for_dead(
    taskd: DaemonFactory, hosts: tuple[Hosts, RedisServer]
) -> None:
    two, server = hosts
    a, b = two.hosts
    behind = start_consumers(taskd, a, 2, wall_offset=-600.0)  # host-a 10 min behind
    ahead = start_consumers(taskd, b, 2, wall_offset=600.0)  # host-b 10 min ahead
    admin = server.client()

    # the skew is real: each worker's registry score is its own host's wall clock
    now = float(admin.time()[0])
    wait_until(lambda: admin.zcard(f"{QUEUE}:workers") == 4, 10, "four workers registered")
    for daemons, offset in ((behind, -600.0), (ahead, 600.0)):
        for daemon in daemons:
            seen = admin.zscore(f"{QUEUE}:workers", worker_of(daemon))
            assert seen is not None and abs(seen - now - offset) < 30, (seen, now, offset)

    producer = Producer(server.port, QUEUE, every=0.05, prefix="slow:0.2:k")
    producer.start()
    everyone = behind + ahead
    # several heartbeat TTLs of work and idle turns on both hosts: nobody looks dead to anybody
    stays_true(
        lambda: not events(everyone, "recovery.dead_worker"), 4 * TTL, "no recovery.dead_worker"
    )
    pushed = producer.finish()
    wait_until(lambda: set(pushed) <= set(runs(taskd)), 20, "every pushed task done")
    stays_true(
        lambda: not events(everyone, "recovery.dead_worker"),
        TTL + RECOVERY_INTERVAL,
        "still no recovery.dead_worker once idle",
    )

    assert [b for b, n in runs(taskd, "start").items() if n > 1] == []
    assert events(everyone, "task.done_but_recovered") == []
    ran = {p for p, ph, _ in taskd.records() if ph == "done"}
    assert ran & pids(behind) and ran & pids(ahead)
    assert all(admin.exists(f"{QUEUE}:alive:{worker_of(d)}") for d in everyone)

    # and a worker that really died is still found, by whichever host's clock: kill -9 one
    gone = ahead.pop()
    gone.stop()
    killed_at = time.monotonic()
    survivors = behind + ahead
    found = wait_until(
        lambda: events(survivors, "recovery.dead_worker"),
        2 * (TTL + RECOVERY_INTERVAL),
        "the killed worker found dead",
    )
    assert time.monotonic() - killed_at <= TTL + RECOVERY_INTERVAL + BLOCK + 1.5
    assert {e["dead_worker"] for e in events(survivors, "recovery.dead_worker")} == {
        worker_of(gone)
    }, found
    stop_all(survivors)
    assert admin.llen(f"{QUEUE}:dead") == 0


class Container(Daemon):
    """`taskd consume` as the first process of a PID namespace (pid 1, as in `docker run`)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.log_path = args, log_path
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/stop()
        command = [*PID_NAMESPACE, sys.executable, "-m", "daemon", *args]
        self.proc = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT)
        )
        self.record = Path(env[RECORD_ENV])

    def signal(self, signum: int) -> None:
        """To taskd itself (unshare does not forward signals)."""
        os.kill(wait_until(lambda: inner_pid(self.proc.pid), 10, "the container's pid 1"), signum)

    def done(self) -> list[str]:
        return [body for _, phase, body in read_records(self.record) if phase == "done"]


def test_host_networked_containers_get_different_default_ids_and_both_consume(
    taskd: DaemonFactory, hosts: tuple[Hosts, RedisServer]
) -> None:
    """Two containers on one host with its network and hostname, each consumer pid 1.

    Before issue 14's fix both default ids were `host-a:1`, and the second waited
    (`worker.id_held_elsewhere`) until the first stopped. Now each id carries its own PID
    namespace's tag, `host-a:<tag>:1`: both consume at once, nothing lost, nothing run twice.
    """
    two, server = hosts
    a = two.hosts[0]
    containers: list[Container] = []
    for i in range(2):
        env = taskd.env(**a.env(), **{RECORD_ENV: str(taskd.tmp / f"record-c{i}.log")})
        args = ["consume", "--redis-url", a.url, "--queue", QUEUE, "--block-timeout", str(BLOCK)]
        args += ["--handler", "handlers_for_tests:record"]
        container = Container(args, env, taskd.tmp / f"container-{i}.log")
        taskd.started.append(container)
        container.wait_for_event("consumer.started", 20)
        containers.append(container)
    first, second = containers
    ids = [worker_of(c) for c in containers]
    assert [c.events("consumer.started")[0]["pid"] for c in containers] == [1, 1]
    inner = [inner_pid(c.proc.pid) for c in containers]
    assert ids == [f"{a.hostname}:{tag_of(pid)}:1" for pid in inner]
    assert ids[0] != ids[1]

    producer = Producer(server.port, QUEUE, every=0.02, prefix="ct")
    producer.start()
    wait_until(
        lambda: len(first.done()) >= 20 and len(second.done()) >= 20, 15, "both at work at once"
    )
    assert [c.proc.poll() for c in containers] == [None, None]
    pushed = producer.finish()
    wait_until(lambda: set(pushed) <= set(first.done() + second.done()), 20, "all pushed done")
    runs_ = Counter(first.done() + second.done())
    assert [body for body, n in runs_.items() if n > 1] == []
    assert events(containers, "worker.id_held_elsewhere") == []
    assert server.client().llen(f"{QUEUE}:dead") == 0
    stop_all(containers)
    print(f"\nmultihost: host-networked containers' default worker ids {ids}")


def test_hosts_with_one_hostname_get_different_default_ids_and_both_consume(
    taskd: DaemonFactory, hosts: tuple[Hosts, RedisServer]
) -> None:
    """Cloned VMs given new machine ids: one hostname, each supervisord's `consumer_00`.

    Before issue 14's fix both default ids were `twin:consumer_00`. Each host's processes see
    their own /etc/machine-id (a bind mount in a mount namespace of their own, see
    tools/harness/hosts.py): `twin:<tag of its machine id>:consumer_00`, both consume at once.
    """
    if not (machine_ids_available() and hostnames_available()):
        pytest.skip("no mount or UTS namespaces here: no host of its own name and machine id")
    two, server = hosts
    a, b = two.hosts
    for host, machine_id in ((a, "a" * 32), (b, "b" * 32)):
        host.hostname, host.machine_id = "twin", machine_id
    clones = [
        daemon
        for host in (a, b)
        for daemon in start_consumers(taskd, host, 1, SUPERVISOR_PROCESS_NAME="consumer_00")
    ]
    ids = [worker_of(d) for d in clones]
    pairs = zip((a, b), clones, strict=True)
    assert ids == [f"twin:{tag_of(d.pid, h.machine_id)}:consumer_00" for h, d in pairs]
    assert ids[0] != ids[1]
    admin = server.client()
    alive = [f"{QUEUE}:alive:{worker}" for worker in ids]
    wait_until(lambda: all(admin.exists(key) for key in alive), 10, "both ids taken")
    assert [json.loads(admin.get(key))["host"] for key in alive] == ["twin", "twin"]

    producer = Producer(server.port, QUEUE, every=0.02, prefix="twin")
    producer.start()
    wait_until(
        lambda: {p for p, ph, _ in taskd.records() if ph == "done"} >= pids(clones),
        15,
        "both hosts at work at once",
    )
    pushed = producer.finish()
    wait_until(lambda: set(pushed) <= set(runs(taskd)), 20, "every pushed task done")
    assert [body for body, n in runs(taskd, "start").items() if n > 1] == []
    assert events(clones, "worker.id_held_elsewhere") == []
    stop_all(clones)
    assert admin.llen(f"{QUEUE}:dead") == 0
    print(f"\nmultihost: one hostname, two machine ids: default worker ids {ids}")


def test_the_link_cut_is_a_real_black_hole_for_one_host_only(
    hosts: tuple[Hosts, RedisServer],
) -> None:
    """The harness's own check: a cut host's PING times out, the other host's answers."""
    two, _ = hosts
    a, b = two.hosts
    ping = (
        "import redis, sys; r = redis.Redis.from_url(sys.argv[1], socket_timeout=1, "
        "socket_connect_timeout=1); print(r.ping())"
    )

    def answers(host: Host) -> bool:
        env = {**os.environ, **host.env()}
        out = subprocess.run(
            [sys.executable, "-c", ping, host.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() == "True"

    a.cut()
    try:
        assert not answers(a)
        assert answers(b)
    finally:
        a.restore()
    wait_until(lambda: answers(a), 10, "host-a reaching Redis again")
