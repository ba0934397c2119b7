"""The faults a soak injects: REGISTRY maps each kind to the generator that injects it.

An injection yields the seconds to wait before it goes on; closing it (the run is interrupted,
an injection failed) runs its `finally`, which lifts the fault. It records on the FaultRun when
the fault started and ended. `undo_all` lifts whatever any fault may have left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from tools.harness.memory import fill_until_refused, make_full, used_memory
from tools.soak.evidence import FaultRun, redis_errors_total
from tools.soak.processes import ProxyControl, proc_status
from tools.soak.records import dead_letter_id
from tools.soak.settings import (
    BLACKHOLE,
    CONSUMER_KILL,
    CONSUMER_KINDS,
    CONSUMER_STOP,
    FAIL_BURST,
    HANG,
    LATENCY,
    LINK_KINDS,
    LONG_OUTAGE,
    OOM,
    OOM_CHUNK,
    OOM_FILLER_KEY,
    REDIS_KILL,
    REDIS_STOP,
    RESET,
)

if TYPE_CHECKING:
    from tools.soak.run import SoakRun

Steps = Generator[float, None, None]
Injection = Callable[["SoakRun", FaultRun], Steps]


def inject(soak: SoakRun, run: FaultRun) -> Steps:
    """The fault of `run`, then (bounded by its recover bound) until it has recovered."""
    spec = soak.specs[run.kind]
    yield from REGISTRY[run.kind](soak, run)
    end = run.ended if run.ended is not None else (run.started or time.time())
    deadline = end + spec.recover_bound
    while time.time() < deadline and not recovered_live(soak, run):
        yield 0.25


def recovered_live(soak: SoakRun, run: FaultRun) -> bool:
    """Whether the records already show the recovery (the run moves on to the next fault)."""
    assert soak.tail is not None and soak.stack is not None
    end = run.ended if run.ended is not None else (run.started or 0.0)
    if run.kind in LINK_KINDS or run.kind == OOM:
        return soak.tail.all_handled_after(soak.stack.consumers, end)
    if run.kind in CONSUMER_KINDS:
        return soak.tail.handled_after(run.target, end, not_pid=run.old_pid)
    dead = dead_ids_live(soak)
    return bool(run.ids) and all(i in dead for i in run.ids)


def dead_ids_live(soak: SoakRun) -> set[int]:
    """The ids of this run's tasks now in the dead letters (empty when Redis does not answer)."""
    import redis

    from daemon.keys import QueueKeys

    assert soak.stack is not None and soak.producer is not None
    client: Any = redis.Redis.from_url(
        soak.stack.redis_url, socket_timeout=2, socket_connect_timeout=1
    )
    try:
        entries = client.lrange(QueueKeys(soak.opts.queue).dead, 0, -1)
    except redis.RedisError:
        return set()
    finally:
        client.close()
    with soak.producer.lock:
        ids = {dead_letter_id(e, soak.producer.produced) for e in entries}
    return {i for i in ids if i is not None}


def undo_all(soak: SoakRun) -> None:
    """Whatever state a fault left (interrupted, failed): link back to pass, nobody frozen."""
    stack = soak.stack
    if stack is None:
        return
    if stack.proxy is not None:
        with contextlib.suppress(Exception):
            stack.proxy.set_mode("pass")
    if soak.redis_paused:
        with contextlib.suppress(Exception):
            stack.redis_signal(signal.SIGCONT)
        soak.redis_paused = False
    if soak.redis_down:
        with contextlib.suppress(Exception):
            stack.redis_start()
        soak.redis_down = False
    with contextlib.suppress(Exception):
        oom_undo(soak)
    for pid in list(soak.paused_pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
        soak.paused_pids.discard(pid)


# -- the link (the chaos proxy) ---------------------------------------------------------------
def _proxy(soak: SoakRun) -> ProxyControl:
    assert soak.stack is not None and soak.stack.proxy is not None
    return soak.stack.proxy


@contextlib.contextmanager
def proxy_mode(soak: SoakRun, run: FaultRun, mode: str, **params: float) -> Iterator[None]:
    """The proxy in `mode` for the block (the fault's active time), back to pass after it."""
    _proxy(soak).set_mode(mode, **params)
    run.started = time.time()
    try:
        yield
    finally:
        _proxy(soak).set_mode("pass")
        run.ended = time.time()


def blackhole(soak: SoakRun, run: FaultRun) -> Steps:
    """Every flow silently dropped for the fault's active time."""
    with proxy_mode(soak, run, "blackhole"):
        yield soak.plan[run.index].active


def latency(soak: SoakRun, run: FaultRun) -> Steps:
    """A slow link (the run's latency and jitter) for the fault's active time."""
    params = {"latency_ms": run.params["latency_ms"], "jitter_ms": run.params["jitter_ms"]}
    with proxy_mode(soak, run, "latency", **params):
        yield soak.plan[run.index].active


def reset(soak: SoakRun, run: FaultRun) -> Steps:
    """Every connection reset at once (an action: nothing to hold)."""
    run.started = time.time()
    state = _proxy(soak).set_mode("reset")
    run.ended = time.time()
    run.notes.append(f"proxy flows open after the reset: {state.get('flows')}")
    yield 0.0


# -- Redis --------------------------------------------------------------------------------------
def redis_kill(soak: SoakRun, run: FaultRun) -> Steps:
    """Kill -9 Redis and start it again from its AOF."""
    assert soak.stack is not None
    run.started = time.time()
    run.ended = soak.stack.redis_kill_restart()
    run.notes.append(f"Redis answered again {run.ended - run.started:.2f}s after kill -9")
    yield 0.0


def redis_stop(soak: SoakRun, run: FaultRun) -> Steps:
    """Redis frozen (SIGSTOP) for the fault's active time, then SIGCONT."""
    assert soak.stack is not None
    soak.stack.redis_signal(signal.SIGSTOP)
    soak.redis_paused = True
    run.started = time.time()
    try:
        yield soak.plan[run.index].active
    finally:
        soak.stack.redis_signal(signal.SIGCONT)
        soak.redis_paused = False
        run.ended = time.time()


def _attempts_now(soak: SoakRun) -> dict[str, int]:
    """Failed Redis calls so far per consumer, from its metrics (absent when unreadable)."""
    assert soak.stack is not None
    out: dict[str, int] = {}
    for name, url in soak.stack.consumer_metrics().items():
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=1.0) as reply,
        ):
            out[name] = redis_errors_total(reply.read().decode("utf-8", "replace"))
    return out


def long_outage(soak: SoakRun, run: FaultRun) -> Steps:
    """Redis shut down until every consumer made thousands of reconnect attempts.

    Held until the consumers' own error counters say so (or `max_hold_s`; without
    metrics, the planned time), then Redis is started again from its AOF.
    """
    assert soak.stack is not None
    target = int(run.params.get("attempts", 1500))
    max_hold = float(run.params.get("max_hold_s", 45.0))
    before = _attempts_now(soak)
    run.started = time.time()  # consumers may notice while the shutdown is under way
    soak.redis_down = True
    soak.stack.redis_shut_down()
    made: dict[str, int] = {}
    try:
        while time.time() < run.started + max_hold:
            yield 0.5
            now = _attempts_now(soak)
            made = {k: v - before.get(k, 0) for k, v in now.items()}
            if not before or len(now) < len(before):
                if time.time() >= run.started + soak.plan[run.index].active:
                    break
            elif all(v >= target for v in made.values()):
                break
        run.counts.update(made)
    finally:
        run.ended = soak.stack.redis_start()
        soak.redis_down = False
    run.notes.append(
        f"Redis down {run.ended - run.started:.1f}s (until every consumer made {target} "
        f"attempts, at most {max_hold:g}s)"
    )


def _redis_direct(soak: SoakRun) -> Any:
    import redis

    assert soak.stack is not None
    return redis.Redis.from_url(soak.stack.redis_url, socket_timeout=5, socket_connect_timeout=2)


def oom(soak: SoakRun, run: FaultRun) -> Steps:
    """Fill Redis to maxmemory (noeviction) right after a backlog, hold, free it again.

    maxmemory is set just above the used memory, the producer pushes a backlog, and a
    filler key takes the rest until Redis refuses it (OOM). maxmemory is then lowered a
    little below what is used, so that neither the filler's own client buffers being
    shrunk nor the memory the consumers free by draining ends the fault early: what is
    still queued must drain while Redis refuses writes. The filler is topped up if
    Redis ever accepts writes again during the hold.
    """
    client = _redis_direct(soak)
    backlog = int(run.params.get("backlog", 1000))
    size = 128 * backlog  # a task body and its list entry, roughly
    margin = max(int(float(run.params.get("margin_mb", 1)) * 2**20), 2 * size)
    try:
        config = {**client.config_get("maxmemory"), **client.config_get("maxmemory-policy")}
        soak.oom_restore = {k: str(v) for k, v in config.items()}
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(used_memory(client) + margin))
        yield from _inject(soak, run, "ok", backlog, poll=0.02)
        run.notes[-1] = "backlog " + run.notes[-1]
        used, limit = make_full(client, size + 2 * OOM_CHUNK, OOM_FILLER_KEY, OOM_CHUNK, most=512)
        run.started = time.time()
        run.counts["maxmemory"] = limit
        refused_before = soak.producer.push_refused if soak.producer else 0
        peak = used
        while time.time() < run.started + soak.plan[run.index].active:
            yield 0.25
            fill_until_refused(client, OOM_FILLER_KEY, OOM_CHUNK, most=16)
            peak = max(peak, used_memory(client))
        run.counts["producer_pushes_refused"] = (
            soak.producer.push_refused - refused_before if soak.producer else 0
        )
        run.counts["used_memory_growth_bytes"] = peak - used
    finally:
        with contextlib.suppress(Exception):
            run.counts["filler_bytes"] = OOM_CHUNK * int(client.llen(OOM_FILLER_KEY))
        client.close()
        oom_undo(soak)
        if run.started is not None:
            run.ended = time.time()


def oom_undo(soak: SoakRun) -> None:
    """Delete the filler and put maxmemory and its policy back (idempotent)."""
    if soak.oom_restore is None:
        return
    client = _redis_direct(soak)
    try:
        client.delete(OOM_FILLER_KEY)
        for name, value in soak.oom_restore.items():
            client.config_set(name, value)
        soak.oom_restore = None
    finally:
        client.close()


# -- the consumers ------------------------------------------------------------------------------
def _consumer_pid(soak: SoakRun, run: FaultRun) -> Generator[float, None, int]:
    assert soak.stack is not None
    deadline = time.time() + 20.0
    while True:
        pid = soak.stack.pid_of(run.target)
        if pid is not None:
            return pid
        if time.time() > deadline:
            raise RuntimeError(f"{run.target} not RUNNING")
        yield 0.25


def consumer_kill(soak: SoakRun, run: FaultRun) -> Steps:
    """Kill -9 the target consumer (supervisord restarts it)."""
    pid = yield from _consumer_pid(soak, run)
    run.old_pid = pid
    os.kill(pid, signal.SIGKILL)
    run.started = run.ended = time.time()
    yield 0.0


def consumer_stop(soak: SoakRun, run: FaultRun) -> Steps:
    """Freeze the target consumer until the outside watchdog replaced it (bounded)."""
    assert soak.stack is not None
    spec = soak.specs[run.kind]
    pid = yield from _consumer_pid(soak, run)
    run.old_pid = pid
    os.kill(pid, signal.SIGSTOP)
    soak.paused_pids.add(pid)
    run.started = time.time()
    deadline = run.started + (spec.detect_bound or 30.0)
    try:
        while time.time() < deadline:
            with contextlib.suppress(Exception):
                new = soak.stack.pid_of(run.target)
                if new is not None and new != pid:
                    run.ended = time.time()
                    break
            yield 0.25
        else:
            run.notes.append(
                "the outside watchdog did not restart it in time; the soak sent SIGCONT"
            )
    finally:
        status = proc_status(pid)
        if status is not None and status[2] == "T":
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        soak.paused_pids.discard(pid)
        if run.ended is None:
            run.ended = time.time()


# -- the tasks ----------------------------------------------------------------------------------
def _inject(soak: SoakRun, run: FaultRun, kind: str, count: int, poll: float = 0.1) -> Steps:
    assert soak.producer is not None
    injection = soak.producer.inject(kind, count)
    deadline = time.time() + 30.0
    while not injection.pushed.is_set():
        if time.time() > deadline:
            raise RuntimeError(f"the producer could not push the {kind} task(s) in 30s")
        yield poll
    run.ids = list(injection.ids)
    run.started = run.ended = injection.pushed_at
    run.notes.append(f"{len(run.ids)} task(s): ids {run.ids[0]}..{run.ids[-1]}")


def fail_burst(soak: SoakRun, run: FaultRun) -> Steps:
    """A burst of tasks whose handler raises (they must end as dead letters)."""
    yield from _inject(soak, run, "fail", int(run.params.get("count", 10)))


def hang(soak: SoakRun, run: FaultRun) -> Steps:
    """One task whose handler never returns (the stall detector must act)."""
    yield from _inject(soak, run, "hang", 1)


REGISTRY: dict[str, Injection] = {
    BLACKHOLE: blackhole,
    RESET: reset,
    LATENCY: latency,
    REDIS_KILL: redis_kill,
    REDIS_STOP: redis_stop,
    CONSUMER_KILL: consumer_kill,
    CONSUMER_STOP: consumer_stop,
    FAIL_BURST: fail_burst,
    HANG: hang,
    OOM: oom,
    LONG_OUTAGE: long_outage,
}
