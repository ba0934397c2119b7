"""One worker id, one live process: who holds a worker id, and what a second process does.

The heartbeat key ``Q:alive:<worker>`` holds the owner record (JSON) of the process that
consumes with that id: a random per-process token plus where it runs. A process that finds
the id held by another record decides with `decide` (pure): take it over when the holder is
a dead process on this very machine (kill -9, then a restart by the supervisor), refuse
(exit 78) when the holder is alive here, and wait for the heartbeat to expire when the holder
runs elsewhere (another host, container or PID namespace: its pid means nothing here).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis

from daemon.redis_errors import RedisFatalError
from daemon.worker_id import BOOT_ID_FILE, PIDNS_LINK, read_link, read_text

if TYPE_CHECKING:
    from daemon.reliable import ReliableQueue

TAKE = "take"
REFUSE = "refuse"
WAIT = "wait"
WAIT_POLL = 1.0  # seconds between attempts to take a worker id held on another machine


@dataclass(frozen=True)
class Owner:
    """Who holds a worker id: enough to tell "this machine, dead pid" from everything else."""

    token: str
    host: str
    pid: int
    since: float  # Unix time the process took the id
    boot: str = ""  # kernel boot id: a reboot or another machine with the same host name
    pidns: str = ""  # PID namespace: containers sharing a host name and kernel
    start: str = ""  # process start time (clock ticks since boot): a recycled pid is not it

    @classmethod
    def current(cls) -> Owner:
        """The record of this process, with a fresh random token."""
        pid = os.getpid()
        return cls(
            token=os.urandom(8).hex(),
            host=socket.gethostname(),
            pid=pid,
            since=round(time.time(), 3),
            boot=read_text(BOOT_ID_FILE),
            pidns=read_link(PIDNS_LINK),
            start=process_start(pid),
        )

    def encode(self) -> bytes:
        """The heartbeat key's value (compared byte for byte by the Lua scripts)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: Any) -> Owner | None:
        """The record in a heartbeat key; None for anything else (e.g. "1" of older taskd)."""
        try:
            doc = json.loads(raw)
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
        except (ValueError, TypeError, KeyError):
            return None

    def same_machine(self, other: Owner) -> bool:
        """True when a pid of `other` can be looked up from this process."""
        return (self.host, self.boot, self.pidns) == (other.host, other.boot, other.pidns)

    def describe(self) -> str:
        """Where the holder runs, for the one-line messages."""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}"


def decide(holder: Owner | None, me: Owner, alive: Callable[[Owner], bool]) -> str:
    """What to do about a worker id held by `holder` (not us): TAKE, REFUSE or WAIT."""
    if holder is None or not me.same_machine(holder):
        return WAIT  # its liveness cannot be checked from here: its heartbeat will tell
    if holder.pid == me.pid or not alive(holder):
        return TAKE
    return REFUSE


def process_alive(holder: Owner) -> bool:
    """Is the holder's process still running (the same process, not a recycled pid)?"""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if holder.start:
        current = process_start(holder.pid)
        return current in ("", holder.start)
    return True


def process_start(pid: int) -> str:
    """Start time of `pid` in clock ticks since boot (/proc), "" where unknown."""
    stat = read_text(f"/proc/{pid}/stat")
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


class IdKeeper:
    """Takes this process's worker id on every queue at startup, or says why it cannot.

    A holder that is a dead process on this machine (kill -9, then a restart) is taken over
    at once; a live one here is RedisFatalError (exit 78); one elsewhere is waited for, with
    one log line: its heartbeat expires when it is gone. Refusing or waiting, the ids already
    taken on other queues are given back (their lists left registered for peer recovery).
    """

    def __init__(
        self,
        queues: list[ReliableQueue],
        owner: Owner,
        ttl: float,
        log: Any,
        wait: Callable[[float], Any],
    ) -> None:
        self.queues = queues
        self.owner = owner
        self.ttl = ttl
        self.log = log
        self._wait = wait  # interruptible by a stop request
        self._wait_logged = False
        # While take() is False: what we wait for, for /readyz ("" once the ids are ours)
        self.waiting = ""

    def take(self) -> bool:
        """Take the id on every queue; False while it is held elsewhere (after a short wait)."""
        for queue in self.queues:
            if not self._take_one(queue):
                return False
        self._wait_logged = False
        self.waiting = ""
        return True

    def _take_one(self, queue: ReliableQueue) -> bool:
        replace = b""
        for _ in range(3):  # a dead holder replaced by another one meanwhile: look again
            holder = queue.take(self.ttl, replace)
            if holder is None:
                return True
            found = Owner.parse(holder)
            verdict = decide(found, self.owner, process_alive)
            if verdict == REFUSE:
                self.release()
                raise RedisFatalError(self._in_use(queue, found))
            if verdict == WAIT:
                # Not holding (renewing) the ids taken on earlier queues while we wait: a
                # killed predecessor's task there is then left to peer recovery meanwhile.
                self.release()
                self._wait_for(queue, found, holder)
                return False
            self.log.warning(
                "worker.id_taken_over",
                queue=queue.keys.queue,
                previous=found.describe() if found else repr(holder),
                note="its previous process is gone (killed?); its tasks are returned",
            )
            replace = holder
        return False

    def _in_use(self, queue: ReliableQueue, holder: Owner | None) -> str:
        who = holder.describe() if holder else "unknown"
        return (
            f"worker id {queue.worker!r} of queue {queue.keys.queue!r} is in use by a live "
            f"process on this host ({who}); expected one process per --worker-id: stop that "
            "process or give this one another --worker-id"
        )

    def _wait_for(self, queue: ReliableQueue, holder: Owner | None, raw: bytes) -> None:
        who = holder.describe() if holder else repr(raw)[:120]
        self.waiting = (
            f"waiting for worker id {queue.worker!r} of queue {queue.keys.queue!r}, held by {who}"
        )
        if not self._wait_logged:
            self._wait_logged = True
            self.log.warning(
                "worker.id_held_elsewhere",
                queue=queue.keys.queue,
                holder=who,
                note="another host (or container) consumes with this --worker-id; waiting "
                "until its heartbeat expires before consuming",
            )
        self._wait(min(WAIT_POLL, self.ttl / 3))

    def release(self) -> None:
        """Give back the ids taken so far (only those still ours); best effort."""
        with contextlib.suppress(redis.RedisError):
            for queue in self.queues:
                queue.forget_self()
