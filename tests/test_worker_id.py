"""The default worker id `<host>:<machine tag>:<process name or pid>` (issue 14: unique across
hosts by default): the derivation of the tag (pure), this machine's, and a restart under
supervisord keeping its id (its own list back at once)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, DaemonFactory, RedisServer, wait_until
from daemon import config
from daemon.worker_id import HOST_PIDNS, is_machine_id, machine_tag
from tools.harness.hosts import PID_NAMESPACE

MACHINE_A = "0123456789abcdef0123456789abcdef"
MACHINE_B = "fedcba9876543210fedcba9876543210"
BOOT_1 = "905a23ac-b333-4ae6-8443-287095369fb1"
BOOT_2 = "1d5e7f2a-0c3b-4d6e-9f80-a1b2c3d4e5f6"
CONTAINER_1, CONTAINER_2 = "pid:[4026532301]", "pid:[4026532402]"
TAG = re.compile(r"[0-9a-f]{8}")


@pytest.mark.parametrize("pidns", [HOST_PIDNS, CONTAINER_1])
def test_the_tag_is_eight_hex_and_the_same_for_the_same_inputs(pidns: str) -> None:
    tag = machine_tag(MACHINE_A, pidns, BOOT_1)
    assert TAG.fullmatch(tag)
    assert machine_tag(MACHINE_A, pidns, BOOT_1) == tag


@pytest.mark.parametrize("pidns", [HOST_PIDNS, CONTAINER_1])
def test_the_tag_differs_by_machine_id(pidns: str) -> None:
    assert machine_tag(MACHINE_A, pidns, BOOT_1) != machine_tag(MACHINE_B, pidns, BOOT_1)


def test_containers_of_one_image_differ_by_pid_namespace_and_from_their_host() -> None:
    """One image, one /etc/machine-id, one kernel: the PID namespaces tell them apart."""
    one, two = (machine_tag(MACHINE_A, ns, BOOT_1) for ns in (CONTAINER_1, CONTAINER_2))
    assert one != two
    assert machine_tag(MACHINE_A, HOST_PIDNS, BOOT_1) not in (one, two)


def test_containers_on_two_machines_with_equal_pid_namespace_numbers_differ_by_boot_id() -> None:
    assert machine_tag(MACHINE_A, CONTAINER_1, BOOT_1) != machine_tag(
        MACHINE_A, CONTAINER_1, BOOT_2
    )


def test_on_the_host_pid_namespace_only_the_machine_id_counts() -> None:
    """No PID namespace link or boot id in it: the same id after a reboot."""
    assert machine_tag(MACHINE_A, HOST_PIDNS, BOOT_1) == machine_tag(MACHINE_A, HOST_PIDNS, BOOT_2)


@pytest.mark.parametrize("missing", ["", "uninitialized", "not-a-machine-id", MACHINE_A[:31]])
def test_without_a_machine_id_the_boot_id_stands_in(missing: str) -> None:
    assert not is_machine_id(missing)
    tag = machine_tag(missing, HOST_PIDNS, BOOT_1)
    assert tag == machine_tag("", HOST_PIDNS, BOOT_1)
    assert tag != machine_tag(missing, HOST_PIDNS, BOOT_2)
    assert tag != machine_tag(MACHINE_A, HOST_PIDNS, BOOT_1)


def test_a_machine_id_in_capitals_is_the_same_machine() -> None:
    assert machine_tag(MACHINE_A.upper(), HOST_PIDNS, BOOT_1) == machine_tag(
        MACHINE_A, HOST_PIDNS, BOOT_1
    )


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def test_this_machines_default_id_is_host_tag_pid_from_its_own_files() -> None:
    files = (_read("/etc/machine-id"), _read("/var/lib/dbus/machine-id"))
    machine_id = next((m for m in files if is_machine_id(m)), "")
    boot = _read("/proc/sys/kernel/random/boot_id")
    tag = machine_tag(machine_id, os.readlink("/proc/self/ns/pid"), boot)
    host = socket.gethostname()
    assert config.load({}, env={}).worker_id == f"{host}:{tag}:{os.getpid()}"
    named = config.load({}, env={"SUPERVISOR_PROCESS_NAME": "consumer_01"})
    assert named.worker_id == f"{host}:{tag}:consumer_01"
    given = {"TASKD_WORKER_ID": "mine", "SUPERVISOR_PROCESS_NAME": "consumer_01"}
    assert config.load({}, env=given).worker_id == "mine"  # an explicit id is unchanged
    # --worker-name (the systemd units' consumer-%i) wins over supervisord's name
    chosen = config.load({"worker_name": "consumer-3"}, env={"SUPERVISOR_PROCESS_NAME": "x"})
    assert chosen.worker_id == f"{host}:{tag}:consumer-3"


def test_a_worker_name_with_a_colon_or_a_space_stops_startup_in_one_line(
    taskd: DaemonFactory,
) -> None:
    for bad in ("a:b", "a b"):
        done = taskd.run("consume", "--worker-name", bad, "--handler", "daemon.handlers:noop")
        assert done.returncode == 78
        (line,) = done.stderr.decode().strip().splitlines()
        assert f"--worker-name={bad!r}" in line and "without spaces or colons" in line, line


def _default_id_in(prefix: tuple[str, ...]) -> str:
    """The default id under supervisord's name `consumer_00` in a new process (after `prefix`)."""
    code = "import os; from daemon import config; print(config.default_worker_id(os.environ))"
    out = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        env={**os.environ, "SUPERVISOR_PROCESS_NAME": "consumer_00"},
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_the_id_is_the_same_in_every_process_of_a_machine_and_differs_per_container() -> None:
    here = config.default_worker_id({"SUPERVISOR_PROCESS_NAME": "consumer_00"})
    assert _default_id_in(()) == here  # a restarted process: the same id
    if subprocess.run([*PID_NAMESPACE, "true"], capture_output=True).returncode != 0:
        pytest.skip("no PID namespaces here (unshare --pid)")
    one, two = _default_id_in(PID_NAMESPACE), _default_id_in(PID_NAMESPACE)
    host, _, name = here.split(":")
    for inside in (one, two):  # the host's name and the process name, another tag
        assert inside.split(":")[0::2] == [host, name] and inside != here
    assert one != two  # two containers (of one image, one hostname)


def test_a_restarted_supervisord_process_keeps_its_default_id_and_takes_its_list_back_at_once(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """kill -9, then the restart under the same program name: same id, own tasks back at
    once (the old heartbeat, 30 s, is not waited for)."""
    queue, env = "wid", {"SUPERVISOR_PROCESS_NAME": "consumer_00"}
    args = ("--queue", queue, "--handler", "handlers_for_tests:record", "--heartbeat-ttl", "30")
    redis_server.client().lpush(queue, "slow:30:held")
    first = taskd.consume(redis_server.url, *args, **env)
    wait_until(lambda: taskd.records(), 15, "the task started")
    worker = first.events("consumer.started")[0]["worker"]
    assert worker == config.default_worker_id(env)
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = taskd.consume(redis_server.url, *args, "--task-timeout", "60", **env)
    recovered = second.wait_for_event("recovery.own_tasks", 10)[0]
    assert recovered["returned"] == 1
    assert second.wait_for_event("consumer.started", 10)[0]["worker"] == worker
    assert second.events("worker.id_taken_over")


def test_after_an_upgrade_the_old_format_ids_list_is_recovered_by_a_peer_nothing_lost(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    """The previous version's id (`<host>:consumer_00`) is not the new one: its list is a dead
    peer's, taken back within heartbeat TTL + recovery interval by the new process."""
    queue, ttl, interval = "up", 2.0, 1.0
    args = ["--queue", queue, "--handler", "handlers_for_tests:record"]
    args += ["--heartbeat-ttl", str(ttl), "--recovery-interval", str(interval)]
    old_id = f"{socket.gethostname()}:consumer_00"
    redis_server.client().lpush(queue, "slow:2:held")
    old = taskd.consume(redis_server.url, *args, "--worker-id", old_id)
    wait_until(lambda: taskd.records(), 15, "the old version's process at work")
    old.signal(signal.SIGKILL)
    old.wait(10)
    killed_at = time.monotonic()
    new = taskd.consume(redis_server.url, *args, SUPERVISOR_PROCESS_NAME="consumer_00")
    found = new.wait_for_event("recovery.dead_worker", 2 * (ttl + interval) + 5)[0]
    assert (found["dead_worker"], found["returned"]) == (old_id, 1)
    assert time.monotonic() - killed_at <= ttl + interval + 2.5  # 2.5 s: startup on 2 cores
    assert new.events("consumer.started")[0]["worker"] != old_id
    wait_until(lambda: "slow:2:held" in taskd.done_bodies(), 15, "the task done by the new one")
    client = redis_server.client()
    assert client.exists(f"{queue}:processing:{old_id}") == 0
    assert old_id.encode() not in client.zrange(f"{queue}:workers", 0, -1)
