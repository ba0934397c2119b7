"""One worker id, one live process: who holds a worker id, and what a second process does.

The heartbeat key ``Q:alive:<worker>`` holds the owner record (JSON) of the process that
consumes with that id: a random per-process token plus where it runs. A process that finds
the id held by another record decides with `decide` (pure): take it over when the holder is
a dead process on this very machine (kill -9, then a restart by the supervisor), refuse
(exit 78) when the holder is alive here, and wait for the heartbeat to expire when the holder
runs elsewhere (another host, container or PID namespace: its pid means nothing here).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

TAKE = "take"
REFUSE = "refuse"
WAIT = "wait"


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
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pidns=_readlink("/proc/self/ns/pid"),
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
    stat = _read(f"/proc/{pid}/stat")
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
