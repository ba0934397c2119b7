"""One proxied connection (a flow): its thread, its two sockets, the faults applied to it."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from tools.chaos_proxy.base import (
    _CHUNK,
    _CONNECT_PENDING,
    _MAX_QUEUED,
    _POLL_S,
    BLACKHOLE,
    LATENCY,
    _abortive_close,
    _wait,
    _Waker,
    log,
)

if TYPE_CHECKING:
    from tools.chaos_proxy.proxy import ChaosProxy


class _Pipe:
    """One direction of a flow: bytes read from ``src`` queued (with due times) for ``dst``."""

    def __init__(self, name: str, src: socket.socket | None, dst: socket.socket | None) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None marks EOF
        self.queued = 0
        self.offset = 0
        self.last_due = 0.0
        self.src_eof = False
        self.dst_shut = False
        self.forwarded = 0

    def clear(self) -> None:
        self.queue.clear()
        self.queued = 0
        self.offset = 0


_Outcome = tuple[str, bool, bool]  # (reason, rst_client, rst_upstream)


class _Flow:
    """One proxied connection, owned end to end by its own thread."""

    def __init__(
        self, proxy: ChaosProxy, fid: int, client: socket.socket, peer: str, dead: bool
    ) -> None:
        self.proxy = proxy
        self.fid = fid
        self.client = client
        self.peer = peer
        self.upstream: socket.socket | None = None
        # dead = saw the black hole; permanent, like a NAT entry that is gone for good.
        self.dead = dead
        self.abort = False
        self.dropped = 0
        self.opened = time.monotonic()
        self.connect_error: OSError | None = None
        self.waker = _Waker()
        self.thread = threading.Thread(target=self._run, name=f"chaos-flow-{fid}", daemon=True)
        self.up = _Pipe("up", client, None)
        self.down = _Pipe("down", None, client)

    def kill(self) -> None:
        self.dead = True
        self.waker.wake()

    def reset(self) -> None:
        self.abort = True
        self.waker.wake()

    def _run(self) -> None:
        reason, rst_client, rst_upstream = "internal error", True, True
        try:
            reason, rst_client, rst_upstream = self._serve()
        except Exception:  # a bug must cost one flow, never the proxy
            log.exception("flow %d crashed", self.fid)
        finally:
            if rst_client:
                _abortive_close(self.client)
            else:
                self.client.close()
            if self.upstream is not None:
                if rst_upstream:
                    _abortive_close(self.upstream)
                else:
                    self.upstream.close()
            self.waker.close()
            self.proxy._flow_done(self, reason)

    def _serve(self) -> _Outcome:
        self.client.setblocking(False)
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.dead:
            self.upstream = self._connect()
            if self.upstream is None:
                if self.abort:
                    return "reset", True, False
                if self.proxy._stopping.is_set():
                    return "proxy stopped", False, False
                # RST the client: the closest a proxy can get to ECONNREFUSED once accepted.
                return f"upstream connect failed: {self.connect_error}", True, False
            self.up.dst = self.upstream
            self.down.src = self.upstream
        return self._pump()

    def _connect(self) -> socket.socket | None:
        """Non-blocking connect so reset/stop can interrupt it; bounded by connect_timeout."""
        deadline = time.monotonic() + self.proxy.connect_timeout
        for family, kind, proto, _, addr in self.proxy._target_addrs:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            while err in _CONNECT_PENDING:
                if self.abort or self.proxy._stopping.is_set():
                    sock.close()
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    err = errno.ETIMEDOUT
                    break
                rfds, wfds = _wait([self.waker.reader], [sock], min(remaining, _POLL_S))
                if self.waker.reader.fileno() in rfds:
                    self.waker.drain()
                if sock.fileno() in wfds:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            sock.close()
            self.connect_error = OSError(err, os.strerror(err))
        return None

    def _pump(self) -> _Outcome:
        pipes = (self.up, self.down)
        cleared = False
        while True:
            if self.abort:
                return "reset", True, True
            if self.proxy._stopping.is_set():
                return "proxy stopped", False, False
            if self.dead:
                if not cleared:  # bytes in flight are lost when the NAT forgets the flow
                    for p in pipes:
                        p.clear()
                    cleared = True
                if all(p.src is None or p.src_eof for p in pipes):
                    return "closed by peers (black-holed)", False, False
            elif self.up.dst_shut and self.down.dst_shut:
                return "closed", False, False

            now = time.monotonic()
            readers: list[socket.socket] = [self.waker.reader]
            writers: list[socket.socket] = []
            timeout = _POLL_S
            for p in pipes:
                if p.src is not None and not p.src_eof and p.queued < _MAX_QUEUED:
                    readers.append(p.src)
                if p.queue and p.dst is not None:
                    due = p.queue[0][0]
                    if due <= now:
                        writers.append(p.dst)
                    else:
                        timeout = min(timeout, due - now)
            rfds, wfds = _wait(readers, writers, timeout)
            if self.waker.reader.fileno() in rfds:
                self.waker.drain()
            for p in pipes:
                if p.src is not None and p.src in readers and p.src.fileno() in rfds:
                    outcome = self._read(p)
                    if outcome is not None:
                        return outcome
            for p in pipes:
                if (
                    p.dst is not None
                    and p.queue
                    and (p.dst not in writers or p.dst.fileno() in wfds)
                ):
                    outcome = self._write(p)
                    if outcome is not None:
                        return outcome

    def _read(self, p: _Pipe) -> _Outcome | None:
        assert p.src is not None
        try:
            data = p.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if self.dead:
                p.src_eof = True  # nothing is forwarded from a dead flow, not even a reset
                return None
            if p is self.up:
                return f"client reset ({exc.strerror})", False, True
            return f"upstream reset ({exc.strerror})", True, False
        if not data:
            p.src_eof = True
            if not self.dead:
                self._enqueue(p, None)
            return None
        if self.dead or self.proxy._settings.mode == BLACKHOLE:
            self.dead = True
            self.dropped += len(data)
            return None
        self._enqueue(p, data)
        return None

    def _enqueue(self, p: _Pipe, data: bytes | None) -> None:
        settings = self.proxy._settings
        delay = self.proxy._delay(settings) if settings.mode == LATENCY else 0.0
        # max() keeps due times monotonic, so jitter never reorders bytes within a flow.
        due = max(time.monotonic() + delay, p.last_due)
        p.last_due = due
        p.queue.append((due, data))
        if data is not None:
            p.queued += len(data)

    def _write(self, p: _Pipe) -> _Outcome | None:
        assert p.dst is not None
        now = time.monotonic()
        while p.queue and p.queue[0][0] <= now:
            data = p.queue[0][1]
            if data is None:
                p.queue.popleft()
                with contextlib.suppress(OSError):  # forward FIN (half-close) faithfully
                    p.dst.shutdown(socket.SHUT_WR)
                p.dst_shut = True
                continue
            try:
                sent = p.dst.send(memoryview(data)[p.offset :])
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if p is self.up:
                    return f"upstream reset ({exc.strerror})", True, False
                return f"client reset ({exc.strerror})", False, True
            p.offset += sent
            p.forwarded += sent
            if p.offset < len(data):
                return None
            p.queue.popleft()
            p.queued -= len(data)
            p.offset = 0
        return None
