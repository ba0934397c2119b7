"""TCP fault-injection proxy for tests, soak tests and failure rehearsals.

The proxy sits between a client (e.g. taskd) and a server (e.g. Redis) and can,
on command, reproduce the network failures that make daemons hang silently in
production: a NAT/firewall that forgets a flow (``blackhole``), a failover that
resets every connection (``reset``), a slow link (``latency``) and a server
that is down (``refuse``).  It exists so that those failure paths are exercised
by tests instead of being discovered at 3 a.m.

Design: one acceptor thread owns the listening socket, one thread per flow owns
that flow's two sockets (non-blocking, poll-driven), and an optional
``http.server`` thread serves the control API.  Other threads never touch a
socket they do not own; they set a flag and wake the owner through a
socketpair, so mode changes take effect immediately and ``stop()`` is bounded.
Only the standard library is used so the proxy can run anywhere Python runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import random
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

__all__ = ["MODES", "ChaosProxy", "main"]

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


class _ControlServer(ThreadingHTTPServer):
    """HTTP server bound to loopback; never blocks on close and skips reverse DNS."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.address_family = (
            socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET
        )
        self.timeout = _POLL_S
        super().__init__(address, _ControlHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), an unbounded reverse-DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _ControlHandler(BaseHTTPRequestHandler):
    """Tiny JSON API: GET/PUT /mode, PUT /mode/<name>, GET /healthz."""

    server_version = "chaos-proxy/1"
    timeout = 5.0  # a stuck client must not pin a handler thread forever

    @property
    def proxy(self) -> ChaosProxy:
        server = self.server
        assert isinstance(server, _ControlServer)
        return server.proxy

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode() + b"\n"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 405:
                self.send_header("Allow", "GET, PUT")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # client went away; nothing useful to do

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/mode":
            self._send_json(200, self.proxy.state())
        elif path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path.startswith("/mode/"):
            self._error(405, "use PUT to change the mode")
        else:
            self._error(404, f"no such endpoint {path!r}")

    def do_PUT(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        try:
            if path == "/mode":
                mode, latency, jitter = self._parse_body()
            elif path.startswith("/mode/"):
                mode, latency, jitter = self._parse_query(path[len("/mode/") :], parts.query)
            elif path == "/healthz":
                self._error(405, "use GET")
                return
            else:
                self._error(404, f"no such endpoint {path!r}")
                return
            self.proxy.set_mode(mode, latency_ms=latency, jitter_ms=jitter)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        except _BodyTooLarge as exc:
            self._error(413, str(exc))
            return
        except RuntimeError as exc:
            self._error(503, str(exc))
            return
        self._send_json(200, self.proxy.state())

    do_POST = do_PUT  # curl users type -X POST; being strict here helps nobody

    def _parse_body(self) -> tuple[str, Any, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise ValueError("chunked bodies are not supported; send Content-Length")
        raw_len = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_len)
        except ValueError:
            raise ValueError(f"invalid Content-Length {raw_len!r}") from None
        if length < 0:
            raise ValueError(f"invalid Content-Length {raw_len!r}")
        if length > _MAX_BODY:
            raise _BodyTooLarge(f"body larger than {_MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError('body must be a JSON object like {"mode": "blackhole"}')
        unknown = set(body) - {"mode", "latency_ms", "jitter_ms"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "mode" not in body:
            raise ValueError('missing "mode"')
        return body["mode"], body.get("latency_ms"), body.get("jitter_ms")

    @staticmethod
    def _parse_query(name: str, query: str) -> tuple[str, Any, Any]:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ValueError(f"malformed query string {query!r}") from None
        unknown = set(params) - {"latency_ms", "jitter_ms"}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values: dict[str, float] = {}
        for key, vals in params.items():
            try:
                values[key] = float(vals[-1])
            except ValueError:
                raise ValueError(f"{key} must be a number, got {vals[-1]!r}") from None
        return name, values.get("latency_ms"), values.get("jitter_ms")


class _BodyTooLarge(Exception):
    pass


class ChaosProxy:
    """Forward TCP from a listen address to a target, injecting faults on demand.

    Usable as a context manager; all methods are thread-safe.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        control_port: int | None = None,
        *,
        control_host: str = "127.0.0.1",
        connect_timeout: float = 3.0,
        seed: int | None = None,
    ) -> None:
        for name, port, low in (("target_port", target_port, 1), ("listen_port", listen_port, 0)):
            if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
                raise ValueError(f"{name} must be an integer in {low}..65535, got {port!r}")
        if control_port is not None and (
            isinstance(control_port, bool)
            or not isinstance(control_port, int)
            or not 0 <= control_port <= 65535
        ):
            raise ValueError(f"control_port must be an integer in 0..65535, got {control_port!r}")
        if control_host == "localhost":
            control_host = "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(control_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:  # the API is unauthenticated: never expose it beyond this host
            raise ValueError(f"control host must be a loopback address, got {control_host!r}")
        if not 0 < connect_timeout <= 60:
            raise ValueError(f"connect_timeout must be in (0, 60] seconds, got {connect_timeout!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.connect_timeout = float(connect_timeout)
        self._control_host = control_host
        self._control_port_req = control_port
        self._random = random.Random(seed)
        self._settings = _Settings(PASS, 0.0, 0.0)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._flows: dict[int, _Flow] = {}
        self._next_fid = 1
        self._stopping = threading.Event()
        self._started = False
        self._waker = _Waker()
        self._listener: socket.socket | None = None
        self._listening = False
        self._listen_error: OSError | None = None
        self._listen_sockaddr: Any = None
        self._port: int | None = None
        self._target_addrs: list[_AddrInfo] = []
        self._acceptor: threading.Thread | None = None
        self._control: _ControlServer | None = None
        self._control_thread: threading.Thread | None = None

    # ----------------------------------------------------------------- properties
    @property
    def port(self) -> int:
        """The bound listen port (useful with listen_port=0)."""
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def control_port(self) -> int | None:
        """The bound control API port, or None when the API is disabled."""
        return None if self._control is None else int(self._control.server_address[1])

    @property
    def mode(self) -> str:
        return self._settings.mode

    @property
    def latency_ms(self) -> float:
        return self._settings.latency_ms

    @property
    def jitter_ms(self) -> float:
        return self._settings.jitter_ms

    def flow_count(self) -> int:
        """Open flows, including black-holed ones the peers still believe are alive."""
        with self._lock:
            return len(self._flows)

    def state(self) -> dict[str, Any]:
        """The JSON document served by GET /mode."""
        s = self._settings
        return {
            "mode": s.mode,
            "latency_ms": _json_ms(s.latency_ms),
            "jitter_ms": _json_ms(s.jitter_ms),
            "flows": self.flow_count(),
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ChaosProxy:
        """Bind the listener (and control API), start threads; returns once bound."""
        if self._started:
            raise RuntimeError("ChaosProxy can only be started once")
        self._started = True
        self._target_addrs = _resolve(self.target_host, self.target_port, passive=False)
        family, kind, proto, _, sockaddr = _resolve(
            self.listen_host, self.listen_port, passive=True
        )[0]
        try:
            listener = self._bind(family, kind, proto, sockaddr)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.listen_host}:{self.listen_port}: {exc}") from exc
        self._listen_sockaddr = listener.getsockname()
        self._port = int(self._listen_sockaddr[1])
        if self._control_port_req is not None:
            try:
                self._control = _ControlServer((self._control_host, self._control_port_req), self)
            except OSError as exc:
                listener.close()
                where = f"{self._control_host}:{self._control_port_req}"
                raise OSError(f"cannot start control API on {where}: {exc}") from exc
        if self._settings.mode == REFUSE:
            listener.close()
        else:
            self._listener = listener
            self._listening = True
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="chaos-accept", daemon=True
        )
        self._acceptor.start()
        if self._control is not None:
            self._control_thread = threading.Thread(
                target=self._control_loop, name="chaos-control", daemon=True
            )
            self._control_thread.start()
        s = self._settings
        log.info(
            "listening on %s:%d -> %s:%d (mode=%s%s)",
            self.listen_host,
            self._port,
            self.target_host,
            self.target_port,
            s.mode,
            f" latency_ms={s.latency_ms:g} jitter_ms={s.jitter_ms:g}" if s.mode == LATENCY else "",
        )
        if self._control is not None:
            log.info("control API on http://%s:%d/mode", self._control_host, self.control_port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket and join threads; returns within ``timeout`` seconds regardless."""
        if self._stopping.is_set():
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._waker.wake()
        with self._lock:
            flows = list(self._flows.values())
            self._cond.notify_all()
        for flow in flows:
            flow.waker.wake()
        threads = [self._acceptor, self._control_thread] + [f.thread for f in flows]
        stuck = []
        for t in threads:
            if t is None or not t.is_alive():
                continue
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(t.name)
        if self._control is not None and self._control_thread is None:
            self._control.server_close()
        if not stuck:
            self._waker.close()
        if stuck:
            log.warning("stopped with threads still running: %s", ", ".join(stuck))
        elif self._started:
            log.info("stopped")

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------- modes
    def set_mode(
        self, mode: str, *, latency_ms: float | None = None, jitter_ms: float | None = None
    ) -> None:
        """Switch mode; latency fields are kept from the previous call when omitted.

        ``reset`` RSTs every open flow, waits (bounded) for them to close, then
        behaves as ``pass``.  Raises ValueError for bad input and RuntimeError if
        the listener could not be closed/re-bound in time (e.g. port stolen).
        """
        mode = _check_mode(mode)
        lat = None if latency_ms is None else _check_ms("latency_ms", latency_ms)
        jit = None if jitter_ms is None else _check_ms("jitter_ms", jitter_ms)
        with self._lock:
            old = self._settings
            new = _Settings(
                PASS if mode == RESET else mode,
                old.latency_ms if lat is None else lat,
                old.jitter_ms if jit is None else jit,
            )
            self._settings = new
            flows = list(self._flows.values())
            for flow in flows:
                if mode == BLACKHOLE:
                    flow.kill()
                elif mode == RESET:
                    flow.reset()
        detail = ""
        if new.mode == LATENCY:
            detail = f" latency_ms={new.latency_ms:g} jitter_ms={new.jitter_ms:g}"
        if mode == BLACKHOLE:
            detail += f" ({len(flows)} open flow(s) now dead for good)"
        if mode == RESET:
            detail += f" ({len(flows)} flow(s) reset)"
        log.info("mode %s -> %s%s", old.mode, mode, detail)
        if mode == RESET:
            deadline = time.monotonic() + _STATE_TIMEOUT_S
            for flow in flows:
                if flow.thread.is_alive():
                    flow.thread.join(max(0.0, deadline - time.monotonic()))
        self._sync_listener(new.mode != REFUSE)

    def _sync_listener(self, want: bool) -> None:
        """Block (bounded) until the acceptor has closed or re-bound the listener."""
        if self._acceptor is None or not self._acceptor.is_alive():
            return
        self._waker.wake()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._listening == want or self._stopping.is_set(), _STATE_TIMEOUT_S
            )
        if not ok:
            action = "re-bind" if want else "close"
            raise RuntimeError(
                f"listener did not {action} within {_STATE_TIMEOUT_S:.0f}s: {self._listen_error}"
            )

    def _delay(self, settings: _Settings) -> float:
        low = settings.latency_ms - settings.jitter_ms
        high = settings.latency_ms + settings.jitter_ms
        return max(0.0, self._random.uniform(low, high)) / 1000.0

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _bind(family: int, kind: int, proto: int, sockaddr: Any) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        try:
            if os.name == "posix":  # lets refuse->pass re-bind while accepted flows live on
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _set_listening(self, value: bool) -> None:
        with self._cond:
            self._listening = value
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                want = self._settings.mode != REFUSE
                if want and self._listener is None:
                    try:
                        family = (
                            socket.AF_INET6 if len(self._listen_sockaddr) == 4 else socket.AF_INET
                        )
                        self._listener = self._bind(
                            family, socket.SOCK_STREAM, 0, self._listen_sockaddr
                        )
                        self._listen_error = None
                        log.info("listener re-bound on port %d", self._port)
                    except OSError as exc:
                        if self._listen_error is None:
                            log.error("cannot re-bind listen port %d: %s", self._port, exc)
                        self._listen_error = exc
                elif not want and self._listener is not None:
                    # Closing (not RST-on-accept) gives clients a genuine ECONNREFUSED.
                    self._listener.close()
                    self._listener = None
                    log.info("listener closed; new connections are refused")
                self._set_listening(self._listener is not None)
                readers = [self._waker.reader]
                if self._listener is not None:
                    readers.append(self._listener)
                rfds, _ = _wait(readers, [], _POLL_S)
                if self._waker.reader.fileno() in rfds:
                    self._waker.drain()
                if self._listener is not None and self._listener.fileno() in rfds:
                    self._accept_ready(self._listener)
        except Exception:
            log.exception("acceptor crashed")
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._set_listening(False)

    def _accept_ready(self, listener: socket.socket) -> None:
        for _ in range(64):  # bounded batch so a flood cannot starve mode changes
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                self._stopping.wait(0.1)
                return
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                if self._stopping.is_set() or self._settings.mode == REFUSE:
                    _abortive_close(conn)
                    continue
                dead = self._settings.mode == BLACKHOLE
                fid = self._next_fid
                self._next_fid += 1
                flow = _Flow(self, fid, conn, peer, dead)
                self._flows[fid] = flow
                flow.thread.start()  # under the lock so set_mode/stop can always join it
            log.info(
                "flow %d open %s -> %s:%d%s",
                fid,
                peer,
                self.target_host,
                self.target_port,
                " (black-holed: not connecting upstream)" if dead else "",
            )

    def _flow_done(self, flow: _Flow, reason: str) -> None:
        with self._lock:
            self._flows.pop(flow.fid, None)
        log.info(
            "flow %d close %s reason=%s sent=%dB received=%dB dropped=%dB age=%.1fs",
            flow.fid,
            flow.peer,
            reason,
            flow.up.forwarded,
            flow.down.forwarded,
            flow.dropped,
            time.monotonic() - flow.opened,
        )

    def _control_loop(self) -> None:
        server = self._control
        assert server is not None
        try:
            while not self._stopping.is_set():
                server.handle_request()  # returns after server.timeout when idle
        except Exception:
            log.exception("control API crashed")
        finally:
            server.server_close()


# ------------------------------------------------------------------------- CLI
_DESCRIPTION = """\
TCP fault-injection proxy: forwards LISTEN -> TARGET and injects network faults
on command, so failure handling is rehearsed instead of discovered in production.
"""

_EPILOG = """\
modes:
  pass       forward bytes both ways (normal operation)
  blackhole  silently drop all bytes in both directions; connections stay open
             (no FIN, no RST). Simulates a NAT/firewall forgetting a flow.
             Affected flows stay dead even after returning to pass; new flows
             work again. Connections accepted meanwhile are black-holed too.
  reset      action: RST every open flow on both sides (failover, LB restart),
             then behave as pass
  latency    delay every chunk by --latency-ms +/- --jitter-ms per direction
             (slow or congested link); byte order is preserved
  refuse     close the listener so new connections get ECONNREFUSED (server
             down); existing flows keep working

control API (loopback only, when --control is given):
  GET  /mode             -> {"mode", "latency_ms", "jitter_ms", "flows"}
  PUT  /mode             body {"mode": "latency", "latency_ms": 200, "jitter_ms": 50}
  PUT  /mode/<name>      no body, e.g. PUT /mode/latency?latency_ms=200
  GET  /healthz

example:
  %(prog)s --listen 127.0.0.1:7000 --target 127.0.0.1:6380 --control 127.0.0.1:7001
  curl -X PUT http://127.0.0.1:7001/mode/blackhole

exit codes: 0 on SIGTERM/SIGINT, 78 on bad arguments or unusable addresses.
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parse_hostport(value: str, flag: str, min_port: int) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_s.isdigit():
        raise _UsageError(f"{flag}: expected HOST:PORT, got {value!r}")
    port = int(port_s)
    if not min_port <= port <= 65535:
        raise _UsageError(f"{flag}: port must be in {min_port}..65535, got {port}")
    return host, port


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="chaos_proxy.py",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address clients connect to (port 0 = pick a free one)",
    )
    parser.add_argument(
        "--target",
        required=True,
        metavar="HOST:PORT",
        help="address of the real server (resolved once at start)",
    )
    parser.add_argument(
        "--control",
        metavar="HOST:PORT",
        help="loopback address for the HTTP control API (default: disabled)",
    )
    parser.add_argument(
        "--mode",
        default=PASS,
        choices=[m for m in MODES if m != RESET],
        help="initial mode (default: pass)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="delay per chunk in latency mode (default: 0)",
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="uniform +/- jitter around --latency-ms (default: 0)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="upstream connect deadline per flow (default: 3)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default: INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    try:
        args = _build_parser().parse_args(argv)
        listen = _parse_hostport(args.listen, "--listen", 0)
        target = _parse_hostport(args.target, "--target", 1)
        control = _parse_hostport(args.control, "--control", 0) if args.control else None
        proxy = ChaosProxy(
            target[0],
            target[1],
            listen[0],
            listen[1],
            None if control is None else control[1],
            control_host="127.0.0.1" if control is None else control[0],
            connect_timeout=args.connect_timeout,
        )
        # Before logging is configured: validates quietly, start() then logs the mode.
        proxy.set_mode(args.mode, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms)
        logging.basicConfig(
            stream=sys.stderr,
            level=args.log_level,
            format="%(asctime)s chaos_proxy %(levelname)s %(message)s",
        )
        proxy.start()
    except (_UsageError, ValueError, OSError) as exc:
        msg = " ".join(str(exc).split())  # guarantee a single line
        print(f"chaos_proxy: error: {msg}", file=sys.stderr)
        return EX_CONFIG

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        proxy.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
