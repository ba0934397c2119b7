"""The batch operations of daemon/reliable.py (--prefetch), against a real Redis: order,
atomicity, the owner check, and a full Redis."""

from __future__ import annotations

import select
import socket
import threading

import pytest
import redis

from conftest import RedisServer, fill
from daemon import producer
from daemon.reliable import MAX_BATCH, ReliableQueue, WorkerIdLost, digest

TASKS = [f"t{i}".encode() for i in range(10)]


def _queue(server: RedisServer, bodies: list[bytes] = TASKS) -> tuple[redis.Redis, ReliableQueue]:
    r = server.client()
    producer.enqueue_many(r, "jobs", bodies)  # stamped; bodies[0] is consumed first
    return r, ReliableQueue(r, "jobs", "w0")


def _items(*bodies: bytes) -> list[tuple[bytes, str]]:
    return [(body, digest(body)) for body in bodies]


def test_claim_batch_takes_the_oldest_first_into_the_processing_list(
    redis_server: RedisServer,
) -> None:
    r, q = _queue(redis_server)
    assert q.claim_batch(4) == TASKS[:4]
    assert r.lrange("jobs:processing:w0", 0, -1) == TASKS[3::-1]  # as LMOVE would leave it
    assert q.claim_batch(100) == TASKS[4:]
    assert q.claim_batch(3) == []
    for bad in (0, MAX_BATCH + 1):
        with pytest.raises(ValueError, match="between 1 and"):
            q.claim_batch(bad)


def test_no_observer_ever_sees_a_batch_task_in_neither_list(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server, [f"t{i}".encode() for i in range(50)])
    done = threading.Event()
    totals: set[int] = set()

    def observe() -> None:
        watcher = redis_server.client()
        while not done.is_set():
            pipe = watcher.pipeline(transaction=True)  # one snapshot of both lists
            pipe.llen("jobs").llen("jobs:processing:w0")
            totals.add(sum(pipe.execute()))

    observer = threading.Thread(target=observe)
    observer.start()
    try:
        for _ in range(200):
            claimed = q.claim_batch(7)
            assert len(claimed) == 7
            assert q.release_unstarted(claimed) == 7
    finally:
        done.set()
        observer.join(10)
    assert totals == {50}
    assert r.hlen("jobs:attempts") == 0


def test_ack_batch_settles_each_task_as_ack_would(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server)
    assert q.claim_batch(3) == TASKS[:3]
    r.hset("jobs:attempts", digest(b"t1"), 2)
    assert q.ack_batch(_items(b"t0", b"t1", b"t2", b"never-held")) == [
        (True, 0),
        (True, 2),
        (True, 0),
        (False, 0),
    ]
    assert r.llen("jobs:processing:w0") == 0 and r.hlen("jobs:attempts") == 0
    stamped = {m.decode() for m in r.zrange("jobs:stamps", 0, -1)}
    assert stamped == {digest(b) for b in TASKS[3:]}  # the acked took their stamps along
    assert q.ack_batch([]) == []


def test_ack_batch_of_identical_bodies_acks_each_copy_once(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server, [b"dup", b"dup", b"other"])
    assert q.claim_batch(3) == [b"dup", b"dup", b"other"]
    assert q.ack_batch(_items(b"dup", b"dup", b"dup")) == [(True, 0), (True, 0), (False, 0)]
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"other"]


def test_ack_batch_under_a_lost_worker_id_acks_nothing(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server)
    q.claim_batch(2)
    ReliableQueue(r, "jobs", "w0").take(5)  # another process (another owner record) has it
    with pytest.raises(WorkerIdLost):
        q.ack_batch(_items(b"t0", b"t1"))
    with pytest.raises(WorkerIdLost):
        q.ack_batch_and_claim(_items(b"t0"), 3, scripted_claim=False)
    assert r.lrange("jobs:processing:w0", 0, -1)[-2:] == [b"t1", b"t0"]
    assert r.zcard("jobs:stamps") == len(TASKS)


def test_ack_batch_and_claim_settles_and_claims_in_one_trip(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server)
    assert q.claim_batch(2) == TASKS[:2]
    acks, claimed = q.ack_batch_and_claim(_items(*TASKS[:2]), 3, scripted_claim=False)
    assert (acks, claimed) == ([(True, 0), (True, 0)], TASKS[2:5])
    # the first task by a plain LMOVE (it went through: Redis takes writes), the rest by script
    assert (q.claim_lost, q.claim_refused_oom) == (False, False)
    acks, claimed = q.ack_batch_and_claim(_items(*TASKS[2:5]), 1, scripted_claim=False)
    assert (acks, claimed) == ([(True, 0)] * 3, [b"t5"])
    assert (q.claim_lost, q.claim_refused_oom) == (False, False)  # a plain LMOVE went through
    assert q.ack_batch_and_claim([], 2, scripted_claim=True) == ([], TASKS[6:8])
    assert q.ack_batch_and_claim(_items(b"t5"), 0, scripted_claim=False) == ([(True, 0)], [])
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"t7", b"t6"]
    assert (q.ack_and_claim_next(b"t6"), r.llen("jobs")) == (((True, 0), b"t8"), 1)


def test_ack_batch_and_claim_survives_a_script_cache_flush(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server)
    q.claim_batch(2)
    r.script_flush()  # as after a Redis restart: NOSCRIPT for both EVALSHAs of the pair
    acks, claimed = q.ack_batch_and_claim(_items(*TASKS[:2]), 2, scripted_claim=False)
    # the plain LMOVE went through, the batch script's NOSCRIPT claimed nothing
    assert (acks, claimed) == ([(True, 0), (True, 0)], [b"t2"])
    assert q.ack_batch_and_claim([], 2, scripted_claim=False) == ([], TASKS[3:5])  # reloaded
    assert r.ping()


class _CutReplies:
    """A loopback relay to Redis that, once `armed`, lets `budget` more reply bytes through and
    then closes: the commands were sent and carried out, the replies after the budget lost."""

    def __init__(self, upstream: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = upstream
        self.budget: int | None = None
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream))
        with client, server, self.listener:
            while self.budget != 0:
                ready, _, _ = select.select([client, server], [], [], 10)
                if not ready:
                    return
                source, sink = (client, server) if client in ready else (server, client)
                data = source.recv(65536)
                if not data:
                    return
                if sink is client and self.budget is not None:
                    data = data[: self.budget]
                    self.budget -= len(data)
                sink.sendall(data)


def test_a_lost_claim_reply_is_flagged_and_its_claim_returned_unseen(
    redis_server: RedisServer,
) -> None:
    admin, _ = _queue(redis_server)
    relay = _CutReplies(redis_server.port)
    q = ReliableQueue(redis.Redis(port=relay.port, socket_timeout=5), "jobs", "w0")
    assert q.claim_batch(1) == [b"t0"]  # connected through the relay
    q.preload()  # no NOSCRIPT reply in the way
    relay.budget = len(b"*2\r\n:1\r\n:0\r\n")  # the ack's reply, not the claim's
    acks, claimed = q.ack_batch_and_claim(_items(b"t0"), 3, scripted_claim=False)
    assert (acks, claimed, q.claim_lost, q.claim_refused_oom) == ([(True, 0)], [], True, None)
    assert admin.lrange("jobs:processing:w0", 0, -1) == TASKS[3:0:-1]  # it was carried out
    survivor = ReliableQueue(admin, "jobs", "w0", q.owner)
    assert survivor.reconcile().returned == 3
    assert survivor.claim_batch(3) == TASKS[1:4] and admin.hlen("jobs:attempts") == 0


def test_release_unstarted_puts_a_drained_batch_back_in_front_in_claim_order(
    redis_server: RedisServer,
) -> None:
    r, q = _queue(redis_server)
    batch = q.claim_batch(5)
    assert q.ack(batch[0]) == (True, 0)  # started and finished; the rest never started
    assert q.release_unstarted(batch[1:] + [b"not-held"]) == 4
    assert r.llen("jobs:processing:w0") == 0 and r.hlen("jobs:attempts") == 0
    assert q.claim_batch(6) == TASKS[1:7]  # the first claimed is the next popped
    assert q.release_unstarted([]) == 0


def test_reconcile_keeps_each_held_body_once(redis_server: RedisServer) -> None:
    r, q = _queue(redis_server, [b"dup", b"a", b"dup", b"b", b"c"])
    assert q.claim_batch(5) == [b"dup", b"a", b"dup", b"b", b"c"]
    recovered = q.reconcile([b"dup", b"b", b"b"])  # "b" listed twice, held once
    assert recovered.returned == 3
    assert sorted(r.lrange("jobs:processing:w0", 0, -1)) == [b"b", b"dup"]
    assert q.claim_batch(5) == [b"dup", b"a", b"c"]  # in claim order, no attempt counted
    assert r.hlen("jobs:attempts") == 0


def test_recover_own_counts_an_attempt_and_leaves_the_doomed_for_dead_letters(
    redis_server: RedisServer,
) -> None:
    r, q = _queue(redis_server, [b"x", b"y"])
    q.claim_batch(2)
    r.hset("jobs:attempts", digest(b"y"), 4)
    recovered = q.recover_own(5)
    assert (recovered.returned, recovered.doomed) == (1, [b"y"])
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"y"] and r.lrange("jobs", 0, -1) == [b"x"]
    assert r.hget("jobs:attempts", digest(b"x")) == b"1"


@pytest.mark.parametrize("flagged", [True, False])
def test_batches_claim_settle_and_return_while_redis_is_full(
    full_redis: RedisServer, flagged: bool
) -> None:
    r, q = _queue(full_redis)
    q.use_allow_oom(flagged)  # False: Redis's legacy rule (a removal first) lets them write
    q.preload()
    fill(full_redis)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        q.try_claim()
    assert q.claim_batch(3) == TASKS[:3]
    assert q.release_unstarted(TASKS[1:3]) == 2
    assert q.ack_batch(_items(b"t0")) == [(True, 0)]
    acks, claimed = q.ack_batch_and_claim([], 1, scripted_claim=False)
    assert (claimed, q.claim_refused_oom) == ([], True)
    acks, claimed = q.ack_batch_and_claim([], 4, scripted_claim=True)
    assert claimed == TASKS[1:5]
    acks, claimed = q.ack_batch_and_claim(_items(*TASKS[1:5]), 2, scripted_claim=True)
    assert (acks, claimed) == ([(True, 0)] * 4, TASKS[5:7])
    assert q.reconcile([b"t6"]).returned == 1
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"t6"]
    assert r.lrange("jobs", -1, -1) == [b"t5"]


def test_a_batch_of_the_largest_size_is_claimed_settled_and_returned_whole(
    redis_server: RedisServer,
) -> None:
    bodies = [f"task-{i}".encode() for i in range(MAX_BATCH + 5)]
    r, q = _queue(redis_server, bodies)
    claimed = q.claim_batch(MAX_BATCH)
    assert claimed == bodies[:MAX_BATCH] and r.llen("jobs") == 5
    assert q.release_unstarted(claimed) == MAX_BATCH
    claimed = q.claim_batch(MAX_BATCH)
    assert q.ack_batch(_items(*claimed)) == [(True, 0)] * MAX_BATCH
    assert r.llen("jobs:processing:w0") == 0 and r.zcard("jobs:stamps") == 5
    with pytest.raises(ValueError, match="between 1 and"):
        q.ack_batch(_items(*bodies))
    with pytest.raises(ValueError, match="between 1 and"):
        q.ack_batch_and_claim([], MAX_BATCH + 1, scripted_claim=True)
