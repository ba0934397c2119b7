"""--prefetch N: waiting tasks claimed N at a time in one round trip, acked in batches, and
nothing lost when the worker dies or drains mid-batch (real redis-server, real taskd)."""

from __future__ import annotations

import signal

from conftest import DaemonFactory, RedisServer, fill, wait_until

HANDLER = ("--handler", "handlers_for_tests:record")
FAST = ("--handler", "handlers_for_tests:record_fast")
Q = "jobs"


def push(server: RedisServer, *bodies: str) -> None:
    """LPUSH in order: the first body given is the first consumed."""
    server.client().lpush(Q, *bodies)


def pending_in_claim_order(server: RedisServer) -> list[str]:
    """The pending list from the end consumers take from (the front) to the back."""
    return [b.decode() for b in reversed(server.client().lrange(Q, 0, -1))]


def held(server: RedisServer, worker: str) -> list[bytes]:
    """What `worker`'s processing list holds (worker "*": every worker's)."""
    client = server.client()
    lists = client.scan_iter(match=f"{Q}:processing:{worker}")
    return [body for key in lists for body in client.lrange(key, 0, -1)]


def claim_and_ack_commands(server: RedisServer) -> int:
    """Commands a consumer sends per claim or ack: scripts, LMOVE, BLMOVE (commandstats)."""
    stats = server.client().info("commandstats")
    names = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_lmove", "cmdstat_blmove")
    return sum(int(stats[n]["calls"]) for n in names if n in stats)


def idle_and_blocked(server: RedisServer) -> bool:
    return int(server.client().info("clients")["blocked_clients"]) >= 1


def test_prefetched_tasks_are_consumed_in_fifo_order(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"task-{i}" for i in range(60)]
    push(redis_server, *bodies)
    taskd.consume(redis_server.url, "--queue", Q, *HANDLER, "--prefetch", "8")
    wait_until(lambda: len(taskd.done_bodies()) == 60, 20, "60 tasks done")
    assert taskd.done_bodies() == bodies


def test_waiting_tasks_are_claimed_and_acked_a_batch_per_round_trip(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(redis_server.url, "--queue", Q, *FAST, "--prefetch", "20", "--worker-id", "w")
    wait_until(lambda: idle_and_blocked(redis_server), 15, "the idle consumer blocked in BLMOVE")
    redis_server.client().config_resetstat()
    bodies = [f"t{i}" for i in range(200)]
    push(redis_server, *bodies)  # one LPUSH: all 200 wait at once
    wait_until(lambda: len(taskd.done_bodies()) == 200, 20, "200 tasks done")
    wait_until(lambda: not held(redis_server, "w"), 5, "every task acked")
    # One at a time, 200 tasks cost 400 commands (an ack and a claim each, paired); in
    # batches of 20 about 2 per batch, plus the heartbeat and promotion of a second or two.
    commands = claim_and_ack_commands(redis_server)
    assert commands <= 2 * 200 // 20 + 20, commands
    assert taskd.done_bodies() == bodies


def test_idle_prefetching_consumer_takes_a_push_at_once(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    taskd.consume(
        redis_server.url, "--queue", Q, *HANDLER, "--prefetch", "50", "--block-timeout", "5"
    )
    wait_until(lambda: idle_and_blocked(redis_server), 15, "the idle consumer blocked in BLMOVE")
    push(redis_server, "ping")
    # well inside the 5 s block timeout: the blocked BLMOVE takes it, no polling
    wait_until(lambda: taskd.done_bodies() == ["ping"], 1.0, "the pushed task done")


def test_worker_killed_mid_batch_loses_nothing_each_recovered_with_one_attempt(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    batch = ["slow:3:first", "a", "b", "c", "d"]
    push(redis_server, *batch)
    worker = ("--queue", Q, *HANDLER, "--prefetch", "5", "--worker-id", "w1")
    first = taskd.consume(redis_server.url, *worker)
    wait_until(lambda: taskd.records(), 15, "the first task to start")
    assert sorted(held(redis_server, "w1")) == sorted(b.encode() for b in batch)
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert len(held(redis_server, "w1")) == 5  # all in the processing list: nothing lost
    second = taskd.consume(redis_server.url, *worker, "--task-timeout", "60")
    recovered = second.wait_for_event("recovery.own_tasks", 15)[0]
    assert recovered["returned"] == 5
    # each counted as one failed attempt, the unstarted ones too (they were held)
    attempts = redis_server.client().hgetall(f"{Q}:attempts")
    assert sorted(int(v) for v in attempts.values()) == [1] * 5
    wait_until(lambda: {"a", "b", "c", "d"} <= set(taskd.done_bodies()), 15, "a-d done")
    done = second.events("task.done")
    assert done and all(e["attempt"] == 2 for e in done), done


def test_sigterm_returns_unstarted_to_the_queue_front_in_order_without_an_attempt(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    push(redis_server, "slow:1.5:first", "a", "b", "c", "later-1", "later-2")
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *HANDLER, "--prefetch", "4", "--worker-id", "w1"
    )
    wait_until(lambda: taskd.records(), 15, "the first task to start")
    assert len(held(redis_server, "w1")) == 4
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert taskd.done_bodies() == ["slow:1.5:first"]  # the started one finished and was acked
    assert pending_in_claim_order(redis_server) == ["a", "b", "c", "later-1", "later-2"]
    assert held(redis_server, "w1") == []
    assert redis_server.client().hlen(f"{Q}:attempts") == 0  # no attempt counted
    released = daemon.events("claim.released")
    assert [e["returned"] for e in released] == [3]


def test_task_timeout_runs_from_each_prefetched_tasks_own_start(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    # three 1.2 s tasks claimed together: 3.6 s in all, but none runs 2 s
    bodies = ["slow:1.2:x", "slow:1.2:y", "slow:1.2:z"]
    push(redis_server, *bodies)
    daemon = taskd.consume(
        redis_server.url, "--queue", Q, *HANDLER, "--prefetch", "3", "--task-timeout", "2"
    )
    wait_until(lambda: len(taskd.done_bodies()) == 3, 15, "the three tasks done")
    assert daemon.proc.poll() is None, "the stall detector fired"
    assert daemon.events("watchdog.stall") == []


def test_full_redis_is_drained_in_batches_and_in_order(
    full_redis: RedisServer, taskd: DaemonFactory
) -> None:
    bodies = [f"task-{i}" for i in range(30)]
    push(full_redis, *bodies)
    fill(full_redis)
    daemon = taskd.consume(full_redis.url, "--queue", Q, *HANDLER, "--prefetch", "10")
    wait_until(lambda: len(taskd.done_bodies()) == 30, 30, "the full Redis drained")
    assert taskd.done_bodies() == bodies
    assert daemon.events("redis.disconnected") == []  # full is not down
    assert daemon.events("redis.out_of_memory"), "Redis full must be noticed and said"
    wait_until(lambda: not held(full_redis, "*"), 5, "every task acked")


def test_redis_becoming_full_during_a_prefetched_drain_is_noticed_and_the_drain_goes_on(
    full_redis: RedisServer, taskd: DaemonFactory
) -> None:
    """The claims that ride along with the acks start with a plain LMOVE: a Redis that
    became full refuses it, so the consumer says so (`redis.out_of_memory`) and drains on."""
    bodies = [f"slow:0.002:{i}" for i in range(600)]
    push(full_redis, *bodies)
    daemon = taskd.consume(full_redis.url, "--queue", Q, *HANDLER, "--prefetch", "20")
    wait_until(lambda: len(taskd.done_bodies()) >= 20, 30, "the drain under way")
    fill(full_redis)
    wait_until(lambda: daemon.events("redis.out_of_memory"), 15, "Redis full noticed")
    wait_until(lambda: len(taskd.done_bodies()) == 600, 60, "the full Redis drained")
    assert sorted(taskd.done_bodies()) == sorted(bodies)
    assert daemon.events("redis.disconnected") == []
