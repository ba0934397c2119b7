"""The proxy's modes and limits, and the socket helpers its parts share."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import select
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("taskd.chaos_proxy")

PASS = "pass"
BLACKHOLE = "blackhole"
RESET = "reset"
LATENCY = "latency"
REFUSE = "refuse"
#: Every mode accepted by :meth:`ChaosProxy.set_mode`.  ``reset`` is an action, not a state.
MODES: tuple[str, ...] = (PASS, BLACKHOLE, RESET, LATENCY, REFUSE)

EX_CONFIG = 78  # sysexits.h: configuration error; supervisors should not restart-loop on it.

_POLL_S = 0.25  # upper bound on any wait; wakers normally cut it short
_CHUNK = 65536
_MAX_QUEUED = 1 << 20  # per direction; stop reading (backpressure) beyond this
_MAX_MS = 3_600_000.0  # one hour: anything larger is a typo, not a rehearsal
_RESOLVE_TIMEOUT_S = 5.0
_STATE_TIMEOUT_S = 2.0  # how long set_mode waits for the listener / reset flows
_MAX_BODY = 64 * 1024
_CONNECT_PENDING = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EINTR}

_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


@dataclass(frozen=True)
class _Settings:
    """Immutable snapshot so flow threads read mode and latency consistently without a lock."""

    mode: str
    latency_ms: float
    jitter_ms: float


def _check_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}; expected one of: {', '.join(MODES)}")
    return mode


def _check_ms(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of milliseconds, got {value!r}")
    ms = float(value)
    if not math.isfinite(ms) or ms < 0 or ms > _MAX_MS:
        raise ValueError(f"{name} must be between 0 and {_MAX_MS:.0f}, got {value!r}")
    return ms


def _json_ms(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _wait(
    readers: Sequence[socket.socket], writers: Sequence[socket.socket], timeout: float
) -> tuple[set[int], set[int]]:
    """Wait for readiness with a deadline; poll() avoids select()'s 1024-fd ceiling."""
    timeout = max(0.0, timeout)
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        r, w, _ = select.select(readers, writers, [], timeout)
        return {s.fileno() for s in r}, {s.fileno() for s in w}
    events: dict[int, int] = {}
    for s in readers:
        events[s.fileno()] = events.get(s.fileno(), 0) | select.POLLIN
    for s in writers:
        events[s.fileno()] = events.get(s.fileno(), 0) | select.POLLOUT
    poller = select.poll()
    for fd, mask in events.items():
        poller.register(fd, mask)
    try:
        ready = poller.poll(timeout * 1000.0)
    except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
        return set(), set()
    err = select.POLLERR | select.POLLHUP | select.POLLNVAL
    readable = {fd for fd, ev in ready if ev & (select.POLLIN | err)}
    writable = {fd for fd, ev in ready if ev & (select.POLLOUT | err)}
    return readable, writable


def _abortive_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets RST, exactly like a failover or a crashed LB."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _resolve(host: str, port: int, passive: bool) -> list[_AddrInfo]:
    """getaddrinfo has no timeout of its own, so run it in a thread and give up after a deadline."""
    result: list[list[_AddrInfo]] = []
    failure: list[OSError] = []
    flags = socket.AI_PASSIVE if passive else 0

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
            result.append(
                [(fam, kind, proto, name, addr) for fam, kind, proto, name, addr in infos]
            )
        except OSError as exc:
            failure.append(exc)

    t = threading.Thread(target=work, name="chaos-resolve", daemon=True)
    t.start()
    t.join(_RESOLVE_TIMEOUT_S)
    if failure:
        raise OSError(f"cannot resolve {host!r}: {failure[0]}")
    if not result or not result[0]:
        raise OSError(f"cannot resolve {host!r}: no answer within {_RESOLVE_TIMEOUT_S:.0f}s")
    return result[0]


class _Waker:
    """Self-pipe that lets other threads interrupt a poll() in the socket-owning thread."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        # The lock prevents writing into a recycled fd number after close().
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # full buffer: a wake-up is already pending
                self._writer.send(b"\0")

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.reader.close()
            self._writer.close()
