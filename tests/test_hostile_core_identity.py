"""One worker id, one live process (real redis-server and taskd processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections import Counter

from conftest import DaemonFactory, RedisServer, stays_true, wait_until
from daemon.ownership import REFUSE, TAKE, WAIT, Owner, decide, process_alive, process_start

HANDLER = ("--handler", "handlers_for_tests:record")
Q = "jobs"


def test_second_live_process_with_the_same_worker_id_exits_78_and_the_first_drains_once(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    bodies = [f"slow:0.7:t{i}" for i in range(6)]
    for body in bodies:
        client.lpush(Q, body)
    first = taskd.consume(redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1")
    wait_until(lambda: taskd.records(), 10, "the first consumer to start a task")
    second = taskd.consume(redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1")
    assert second.wait(15) == 78
    out = second.log_path.read_text()
    assert "worker id 'w1'" in out and f"pid {first.pid}" in out and "since" in out
    wait_until(lambda: len(taskd.done_bodies()) == 6, 20, "6 tasks done")
    stays_true(  # anything run twice would show within this
        lambda: len([1 for _, phase, _ in taskd.records() if phase == "start"]) == len(bodies),
        0.5,
        "no task started twice",
    )
    assert Counter(body for _, phase, body in taskd.records() if phase == "start") == Counter(
        bodies
    )
    assert first.proc.poll() is None
    assert client.llen(f"{Q}:processing:w1") == 0


def test_worker_killed_and_restarted_takes_its_id_over_at_once(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush(Q, "slow:30:held")
    args = ("--queue", Q, *HANDLER, "--worker-id", "w1", "--heartbeat-ttl", "30")
    args += ("--max-attempts", "1")  # the held task, counted as failed, is dead-lettered
    victim = taskd.consume(redis_server.url, *args)
    wait_until(lambda: taskd.records(), 10, "the task to start")
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    client.lpush(Q, "after")
    restarted = taskd.consume(redis_server.url, *args)
    # the heartbeat of the dead process would live 30 s more: the id is taken over at once
    wait_until(lambda: "after" in taskd.done_bodies(), 10, "the restarted worker consuming")
    restarted.wait_for_event("worker.id_taken_over", 1)
    recovery = restarted.wait_for_event("recovery.own_tasks", 1)[0]
    assert recovery["dead_lettered"] == 1  # counted as a failed attempt, as before
    assert json.loads(client.lindex(f"{Q}:dead", 0))["body"] == "slow:30:held"


def test_id_held_on_another_host_is_waited_for_until_its_heartbeat_expires(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    other = {"token": "feed", "host": "elsewhere", "pid": 1, "since": time.time() - 60}
    client.set(f"{Q}:alive:w1", json.dumps(other), px=2500)
    client.lpush(Q, "task")
    daemon = taskd.consume(redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1")
    line = daemon.wait_for_event("worker.id_held_elsewhere", 10)[0]
    assert "host elsewhere, pid 1" in line["holder"]
    assert taskd.done_bodies() == []
    wait_until(lambda: taskd.done_bodies() == ["task"], 10, "the task once the holder expired")
    assert len(daemon.events("worker.id_held_elsewhere")) == 1
    holder = json.loads(client.get(f"{Q}:alive:w1"))
    assert holder["pid"] == daemon.pid


def test_process_that_lost_its_id_stops_without_touching_the_list(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush(Q, "slow:2:held")
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *HANDLER, "--worker-id", "w1", "--heartbeat-ttl", "3"
    )
    wait_until(lambda: taskd.records(), 10, "the task to start")
    usurper = {"token": "beef", "host": "elsewhere", "pid": 4242, "since": time.time()}
    client.set(f"{Q}:alive:w1", json.dumps(usurper), px=60000)
    assert daemon.wait(15) == 78
    assert daemon.events("worker.id_lost")
    assert "taken over by another process (host elsewhere, pid 4242" in daemon.log_path.read_text()
    assert client.lrange(f"{Q}:processing:w1", 0, -1) == [b"slow:2:held"]  # left for the owner
    assert json.loads(client.get(f"{Q}:alive:w1"))["pid"] == 4242


def test_decide_takes_over_only_a_dead_holder_on_this_very_machine() -> None:
    me = Owner.current()
    here = dataclasses.replace(me, token="other", pid=os.getppid())
    start = process_start(os.getppid())
    assert decide(dataclasses.replace(here, start=start), me, process_alive) == REFUSE
    recycled = dataclasses.replace(here, start=str(int(start or 0) + 1))  # same pid, not it
    assert decide(recycled, me, process_alive) == TAKE
    assert decide(dataclasses.replace(here, pid=2**22 + 7), me, process_alive) == TAKE
    assert decide(dataclasses.replace(here, host="elsewhere"), me, process_alive) == WAIT
    assert decide(dataclasses.replace(here, pidns="pid:[1]"), me, process_alive) == WAIT
    assert decide(None, me, process_alive) == WAIT  # "1" of an older taskd: unknown
    assert Owner.parse(b"1") is None
    assert Owner.parse(me.encode()) == me
