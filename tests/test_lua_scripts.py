"""The Lua scripts of daemon/lua/: each header names its KEYS and ARGV, and every caller passes
exactly those (the bug class of a header drifted from its code, and of a caller from both)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import pytest

from conftest import ROOT, RedisServer
from daemon import lua, producer
from daemon.lua import LuaScript, ScriptCallError
from daemon.reliable import ReliableQueue, WorkerIdLost, digest


def test_every_script_reads_its_fixed_slots_through_named_locals_only() -> None:
    assert len(lua.names()) >= 15
    for name in lua.names():
        script = lua.script(name)  # raises on a slot read outside the header
        assert script.keys, f"{name}.lua names no KEYS"
        assert "#!lua" not in script.source  # the flag is prepended at load, on Redis >= 7


def test_a_slot_read_outside_the_header_or_out_of_order_is_refused() -> None:
    with pytest.raises(ValueError, match="outside a named local"):
        lua.parse("drift", "local a = KEYS[1]\nredis.call('DEL', KEYS[2])\n")
    with pytest.raises(ValueError, match="out of order"):
        lua.parse("gap", "local a = KEYS[1]\nlocal b = ARGV[2]\n")
    fine = lua.parse(
        "ok", "local a = KEYS[1]  -- KEYS[9] in a comment\nlocal n = tonumber(ARGV[1])"
    )
    assert (fine.keys, fine.args, fine.variadic) == (("a",), ("n",), False)


def test_a_call_with_a_slot_missing_is_refused_before_anything_is_sent(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "a")
    assert q.try_claim() == b"a"
    three_keys = [q.processing, q.keys.attempts, q.alive_key]  # the stamps key forgotten
    with pytest.raises(ScriptCallError, match="ack_batch.lua takes 4 KEYS"):
        q.scripts.run("ack_batch", three_keys, [q.owner_record, b"a", digest(b"a")])
    with pytest.raises(ScriptCallError, match="takes 2 KEYS"):
        q.scripts.command("claim_batch", q._claim_keys, [])  # n forgotten
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"a"]  # nothing ran


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The names of the scripts whose calls were checked against their headers."""
    seen: set[str] = set()
    real = LuaScript.check

    def recording(self: LuaScript, nkeys: int, nargs: int) -> None:
        real(self, nkeys, nargs)  # a mismatch raises ScriptCallError and fails the test
        seen.add(self.name)

    monkeypatch.setattr(LuaScript, "check", recording)
    yield seen


def test_every_script_is_called_with_the_counts_its_header_names(
    redis_server: RedisServer, checked: set[str]
) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    peer = ReliableQueue(r, "jobs", "peer")
    producer.enqueue_many(r, "jobs", [f"t{i}" for i in range(8)])
    producer.enqueue_delayed(r, "jobs", "later", 0)
    assert q.take(5) is None
    q.heartbeat(5)
    assert q.promote_due() == 1  # "later", due at once, goes to the front
    assert q.claim_batch(2) == [b"later", b"t0"]
    assert q.ack_batch([(b"later", digest(b"later"))]) == [(True, 0)]
    acks, claimed = q.ack_batch_and_claim([(b"t0", digest(b"t0"))], 2, scripted_claim=False)
    assert (acks, claimed) == ([(True, 0)], [b"t1", b"t2"])
    assert q.release_unstarted([b"t2"]) == 1
    assert q.fail(b"t1", b'{"body": "t1"}', 5, 60, 60)[0] == "retry"
    assert q.claim_when_full() == b"t2"
    assert q.dead_letter(b"t2", b'{"body": "t2"}')
    assert q.requeue_dead(b'{"body": "t2"}', b"t2")  # to the back of the queue
    assert q.try_claim() == b"t3"
    assert q.reconcile([]).returned == 1
    assert q.try_claim() == b"t3"
    q.forget_self()
    assert q.recover_own(5).returned == 1
    assert peer.recover_worker("w0", 5).returned == 0
    assert checked == set(lua.names())


def test_owner_checked_scripts_refuse_a_worker_id_held_elsewhere(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client()
    q = ReliableQueue(r, "jobs", "w0")
    r.lpush("jobs", "a", "b")
    q.claim_batch(2)
    r.set("jobs:alive:w0", b'{"token": "someone else"}')
    for call in (
        lambda: q.ack_batch([(b"a", digest(b"a"))]),
        lambda: q.release_unstarted([b"a"]),
        lambda: q.reconcile(),
        lambda: q.recover_own(5),
        lambda: q.fail(b"a", b"{}", 5, 0.1, 0.1),
        lambda: q.dead_letter(b"a", b"{}"),
    ):
        with pytest.raises(WorkerIdLost, match="taken over"):
            call()
    assert r.lrange("jobs:processing:w0", 0, -1) == [b"b", b"a"]  # untouched
    assert r.llen("jobs") == 0 and r.hlen("jobs:attempts") == 0


def test_the_wheel_ships_the_lua_files() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "daemon.lua" in config["packages"]
    assert "*.lua" in config["package-data"]["daemon.lua"]
