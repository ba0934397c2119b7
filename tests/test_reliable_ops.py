"""The atomic queue operations of daemon/reliable.py, driven directly against a real Redis."""

from __future__ import annotations

import json
import threading
import time

from conftest import RedisServer, wait_until
from daemon.reliable import ReliableQueue, digest


def test_reconcile_keeps_the_task_claimed_ahead_and_returns_the_rest(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.rpush("jobs", "orphan", "held")  # the right end is claimed first
    assert q.try_claim() == b"held"
    assert q.try_claim() == b"orphan"
    recovered = q.reconcile([b"held"])
    assert recovered.returned == 1
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"held"]
    assert r.lrange("jobs", 0, -1) == [b"orphan"]
    assert r.hlen("jobs:attempts") == 0  # a lost reply is not a failed attempt


def test_ack_and_claim_next_in_one_trip(redis_server: RedisServer) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "a", "b")
    body = q.claim(1)
    assert body == b"a"
    r.hset("jobs:attempts", digest(b"a"), 2)
    (acked, failures), following = q.ack_and_claim_next(body)
    assert (acked, failures, following) == (True, 2, b"b")
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"b"]
    assert r.hlen("jobs:attempts") == 0
    (acked, _), following = q.ack_and_claim_next(b"b")
    assert acked and following is None
    assert r.llen("jobs:processing:w0") == 0


def test_ack_survives_a_script_cache_flush(redis_server: RedisServer) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "a")
    q.claim(1)
    r.script_flush()  # as after a Redis restart: NOSCRIPT for the next EVALSHA
    (acked, _), following = q.ack_and_claim_next(b"a")
    assert acked and following is None
    assert r.ping()  # the connection is still in step: the next reply is the right one


def test_failure_retries_with_doubling_delay_then_dead_letters_once_per_attempt(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "same", "same")  # identical bodies must not collapse in the delayed set
    delays = []
    for _ in range(2):
        body = q.claim(1)
        verdict, attempts, delay = q.fail(body, b'{"body": "same"}', 5, 0.1, 0.15)
        assert verdict == "retry"
        delays.append((attempts, delay))
    assert delays == [(1, 0.1), (2, 0.15)]  # base, then 2 x base capped; shared counter
    assert r.zcard("jobs:delayed") == 2 and r.llen("jobs:processing:w0") == 0
    assert q.promote_due() == 0
    time.sleep(0.2)  # time passes beyond both retry delays (0.1 s, 0.15 s): nothing to wait on
    assert q.promote_due() == 2
    assert r.lrange("jobs", 0, -1) == [b"same", b"same"]
    body = q.claim(1)
    entry = b'{"body": "same", "attempts": 0, "error": "E"}'
    assert q.fail(body, entry, 3, 0.1, 0.15)[:2] == ("dead", 3)
    assert json.loads(r.lindex("jobs:dead", 0))["attempts"] == 3
    # a lost reply re-sent finds nothing to do: one failure is never counted twice
    assert q.fail(body, entry, 3, 0.1, 0.15) == ("gone", 0, 0.0)
    assert r.llen("jobs:dead") == 1


def test_dead_letter_moves_atomically_with_the_document(redis_server: RedisServer) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "bad")
    q.claim(1)
    assert q.dead_letter(b"bad", b'{"body": "bad"}')
    assert r.lrange("jobs:dead", 0, -1) == [b'{"body": "bad"}']
    assert r.llen("jobs:processing:w0") == 0
    assert not q.dead_letter(b"bad", b"{}")  # no longer ours: nothing written


def test_recovering_a_live_worker_does_nothing(redis_server: RedisServer) -> None:
    r = redis_server.client()
    alive = ReliableQueue(r, "jobs", "alive")
    peer = ReliableQueue(r, "jobs", "peer")
    r.lpush("jobs", "t")
    alive.heartbeat(5)
    alive.claim(1)
    assert peer.dead_workers() == []
    assert peer.recover_worker("alive", 5).skipped
    assert r.lrange("jobs:processing:alive", 0, -1) == [b"t"]


def test_many_recoverers_racing_return_each_task_exactly_once(redis_server: RedisServer) -> None:
    r = redis_server.client()
    dead = ReliableQueue(r, "jobs", "dead")
    r.lpush("jobs", *[f"t{i}" for i in range(50)])
    dead.heartbeat(0.2)
    for _ in range(50):
        dead.claim(1)
    wait_until(lambda: not r.exists("jobs:alive:dead"), 5, "the heartbeat to expire")
    recoverers = [ReliableQueue(redis_server.client(), "jobs", f"r{i}") for i in range(8)]
    threads = [threading.Thread(target=q.recover_worker, args=("dead", 5)) for q in recoverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.lrange("jobs", 0, -1)) == sorted(f"t{i}".encode() for i in range(50))
    assert r.exists("jobs:processing:dead") == 0
    attempts = {k.decode(): int(v) for k, v in r.hgetall("jobs:attempts").items()}
    assert set(attempts.values()) == {1}  # one failed attempt each, not one per recoverer
    assert json.dumps(attempts)  # plain data


def _consumer_with_lost_reply(server: RedisServer, method: str, bodies: list[str]) -> list[bytes]:
    """Run a real Consumer in-process; the first reply of `method` is lost after Redis ran it."""
    import redis

    from daemon import config
    from daemon.consumer import Consumer

    r = server.client()
    r.rpush("jobs", *reversed(bodies))  # bodies[0] is consumed first
    settings = config.load(
        {
            "redis_url": server.url,
            "queues": ["jobs"],
            "block_timeout": "0.2",
            "worker_id": "w0",
            "backoff_cap": "0.05",
            "backoff_base": "0.01",
            "max_attempts": "3",
            "retry_base": "0.01",
            "retry_cap": "0.02",
        },
        env={},
    )
    handled: list[bytes] = []

    def handler(body: bytes) -> None:
        handled.append(body)
        if body.startswith(b"fail"):
            raise RuntimeError("failing on purpose")

    consumer = Consumer(settings, handler)
    real = getattr(ReliableQueue, method)
    lost = []

    def lossy(self: ReliableQueue, *args: object, **kwargs: object) -> object:
        result = real(self, *args, **kwargs)
        if not lost:
            lost.append(result)
            raise redis.TimeoutError("Timeout reading from socket")  # applied, reply lost
        return result

    setattr(ReliableQueue, method, lossy)
    try:
        threading.Timer(2.5, consumer.stop_requested.set).start()
        consumer.run()
    finally:
        setattr(ReliableQueue, method, real)
    assert lost, "the fault was injected"
    return handled


def test_lost_ack_reply_with_duplicate_bodies_loses_nothing(redis_server: RedisServer) -> None:
    handled = _consumer_with_lost_reply(
        redis_server, "ack_batch_and_claim", ["first", "dup", "dup", "last"]
    )
    # every pushed copy is handled at least once: the unseen second "dup" is not acked away
    assert handled.count(b"dup") >= 2 and b"first" in handled and b"last" in handled
    r = redis_server.client()
    assert r.llen("jobs") == 0 and r.llen("jobs:processing:w0") == 0


def test_lost_failure_reply_is_not_counted_twice(redis_server: RedisServer) -> None:
    handled = _consumer_with_lost_reply(redis_server, "fail", ["fail-once"])
    r = redis_server.client()
    # three attempts in all (max_attempts 3): the lost reply did not count a fourth
    assert handled.count(b"fail-once") == 3
    assert json.loads(r.lindex("jobs:dead", 0))["attempts"] == 3
