"""The live threads: the producer (tasks, pub/sub, injections) and the sampler."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tools.harness import poll_until
from tools.soak.processes import proc_status
from tools.soak.records import ProducedSet
from tools.soak.stack import Stack


@dataclass
class Injection:
    """Tasks of a given kind the fault schedule asked the producer to push."""

    kind: str
    count: int
    ids: list[int] = field(default_factory=list)
    pushed: threading.Event = field(default_factory=threading.Event)
    pushed_at: float = 0.0


class Producer(threading.Thread):
    """Pushes tasks straight into Redis at a steady rate, and pub/sub messages at a low one.

    A task counts as produced once LPUSH returned; a failed push is retried with the same
    bodies (a reply lost after the write shows up as a duplicate, never as a loss). A push
    Redis answered with an error (OOM: maxmemory reached) was refused, so it stored nothing:
    its ordinary tasks are dropped as never produced (counted in `push_refused`, like a web
    request answered 503) and the producer keeps its pace; injected tasks are retried. After
    an outage the producer does not burst to catch up more than one second of tasks.
    """

    TICK = 0.02

    def __init__(
        self,
        redis_url: str,
        queue: str,
        channel: str,
        rate: float,
        pubsub_rate: float,
        produced_path: Path,
        base: int,
    ) -> None:
        super().__init__(name="soak-producer", daemon=True)
        from daemon.config import Settings
        from daemon.connection import make_client

        settings = Settings(
            redis_url=redis_url, block_timeout=1.0, socket_timeout=2.0, connect_timeout=1.0
        )
        self.client = make_client(settings, client_name="taskd-soak-producer")
        self.queue = queue
        self.channel = channel
        self.rate = rate
        self.pubsub_rate = pubsub_rate
        self.produced_path = produced_path
        self.base = base
        self.produced = ProducedSet(base)
        self.lock = threading.Lock()
        self.producing = threading.Event()
        self.producing.set()
        self._halt = threading.Event()
        self._injections: list[Injection] = []
        self._pending: list[tuple[int, float, str, bytes]] = []
        self._pending_injections: list[Injection] = []
        self.next_n = 1
        self.next_p = 1
        self.push_errors = 0
        self.push_refused = 0  # tasks whose push Redis refused (never produced)
        self.last_error = ""
        self.skipped_seconds = 0.0
        self.published = 0
        self.published_unheard = 0
        self.publish_errors = 0

    def inject(self, kind: str, count: int) -> Injection:
        """Ask for `count` tasks of `kind` in the next push; wait on `.pushed`."""
        injection = Injection(kind, count)
        with self.lock:
            self._injections.append(injection)
        return injection

    def stop_production(self, timeout: float) -> bool:
        """Stop making tasks; True once everything made was pushed (within `timeout`)."""
        self.producing.clear()
        return bool(poll_until(lambda: not self._pending and not self._injections, timeout, 0.05))

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout)

    def _make(self, kind: str) -> tuple[int, float, str, bytes]:
        task_id = self.base + self.next_n
        self.next_n += 1
        t = time.time()
        body = json.dumps({"id": task_id, "t": round(t, 6), "kind": kind}, separators=(",", ":"))
        return task_id, t, kind, body.encode()

    def _push(self, out: TextIO) -> float | None:
        """Push what is pending, one LPUSH per batch (each stored whole or not at all).

        None once all of it is pushed (or dropped as refused), else the seconds to wait
        before retrying what is left.
        """
        from daemon.producer import BATCH, enqueue_many

        while self._pending:
            batch = self._pending[:BATCH]
            try:
                enqueue_many(self.client, self.queue, [p[3] for p in batch])
            except Exception as exc:  # noqa: BLE001 - any failure: retry the same bodies
                self.push_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return self.TICK if self._refused(exc) else 0.2
            with self.lock:
                for task_id, t, kind, _ in batch:
                    self.produced.add(task_id, t, kind)
                    out.write(f"{task_id} {t:.6f} {kind}\n")
            del self._pending[: len(batch)]
            out.flush()
        pushed_at = time.time()
        for injection in self._pending_injections:
            injection.pushed_at = pushed_at
            injection.pushed.set()
        self._pending_injections = []
        return None

    def _refused(self, exc: Exception) -> bool:
        """An error reply stored nothing: drop its ordinary tasks (not produced), keep the rest.

        True when nothing is left to retry: the next tick makes new tasks at the usual pace.
        """
        import redis

        cause = getattr(exc, "cause", exc)  # enqueue_many wraps it in PushStopped
        if not isinstance(cause, redis.ResponseError):
            return False
        injected = {i for injection in self._pending_injections for i in injection.ids}
        kept = [p for p in self._pending if p[0] in injected]
        self.push_refused += len(self._pending) - len(kept)
        self._pending = kept
        return not kept

    def run(self) -> None:
        from daemon.producer import publish

        with open(self.produced_path, "a", encoding="ascii") as out:
            started = time.monotonic()
            made = 0
            next_pub = started
            while not self._halt.is_set():
                now = time.monotonic()
                if self.producing.is_set() and not self._pending:
                    due = int((now - started) * self.rate) - made
                    if due > self.rate:  # an outage held us: resume the pace, do not burst
                        self.skipped_seconds += (due - self.rate) / self.rate
                        made += due - int(self.rate)
                        due = int(self.rate)
                    with self.lock:
                        injections, self._injections = self._injections, []
                    for injection in injections:
                        for _ in range(injection.count):
                            item = self._make(injection.kind)
                            injection.ids.append(item[0])
                            self._pending.append(item)
                    for _ in range(max(0, due)):
                        self._pending.append(self._make("ok"))
                    made += max(0, due)
                    self._pending_injections = injections
                if self._pending:
                    wait = self._push(out)
                    if wait is not None:
                        self._halt.wait(wait)
                        continue
                if self.pubsub_rate and self.producing.is_set() and now >= next_pub:
                    next_pub = max(next_pub + 1.0 / self.pubsub_rate, now - 1.0)
                    body = json.dumps({"p": self.base + self.next_p, "t": round(time.time(), 6)})
                    try:
                        heard = publish(self.client, self.channel, body)
                        self.next_p += 1
                        self.published += 1
                        self.published_unheard += heard == 0
                    except Exception:  # noqa: BLE001 - pub/sub keeps nothing: counted, not retried
                        self.publish_errors += 1
                self._halt.wait(self.TICK)
        with contextlib.suppress(Exception):
            self.client.close()


class Sampler(threading.Thread):
    """Every few seconds: RSS and open fds of every process (following restarts), and depths."""

    def __init__(self, stack: Stack, queue: str, interval: float, path: Path) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.stack = stack
        self.queue = queue
        self.interval = interval
        self.path = path
        self.latest: dict[str, Any] = {}
        self.restarts: Counter[str] = Counter()
        self._last_pid: dict[str, int] = {}
        self._halt = threading.Event()

    def stop(self, timeout: float = 15.0) -> None:
        self._halt.set()
        self.join(timeout)

    def depths(self, client: Any) -> dict[str, int] | None:
        from daemon.keys import QueueKeys

        qk = QueueKeys(self.queue)
        try:
            workers = client.zrange(qk.workers, 0, -1)
            pipe = client.pipeline(transaction=False)
            pipe.llen(qk.pending)
            pipe.zcard(qk.delayed)
            pipe.llen(qk.dead)
            for w in workers:
                pipe.llen(qk.processing(w.decode()))
            pending, delayed, dead, *held = pipe.execute()
        except Exception:  # noqa: BLE001 - Redis down or frozen: no depth this time
            return None
        return {"pending": pending, "delayed": delayed, "dead": dead, "processing": sum(held)}

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        rpc = None
        with open(self.path, "a", encoding="utf-8") as out:
            while True:
                pids: dict[str, int] = {}
                try:
                    rpc = rpc or self.stack.rpc()
                    for info in rpc.getAllProcessInfo():
                        if info.get("pid"):
                            pids[info["name"]] = int(info["pid"])
                except Exception:  # noqa: BLE001 - supervisord busy: sample what we know
                    rpc = None
                pids.update(self.stack.extra_pids())
                procs = {}
                for name, pid in pids.items():
                    status = proc_status(pid)
                    if status is not None:
                        procs[name] = [pid, round(status[0], 2), status[1], status[2]]
                    if self._last_pid.get(name, pid) != pid:
                        self.restarts[name] += 1
                    self._last_pid[name] = pid
                sample = {"t": round(time.time(), 3), "depths": self.depths(client), "procs": procs}
                self.latest = sample
                out.write(json.dumps(sample) + "\n")
                out.flush()
                if self._halt.wait(self.interval):
                    break
        client.close()
