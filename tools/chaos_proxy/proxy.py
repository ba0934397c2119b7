"""ChaosProxy: the listener, its flows and its control server; modes set on demand."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
import time
from types import TracebackType
from typing import Any

from tools.chaos_proxy.base import (
    _POLL_S,
    _STATE_TIMEOUT_S,
    BLACKHOLE,
    LATENCY,
    PASS,
    REFUSE,
    RESET,
    _abortive_close,
    _AddrInfo,
    _check_mode,
    _check_ms,
    _json_ms,
    _resolve,
    _Settings,
    _wait,
    _Waker,
    log,
)
from tools.chaos_proxy.control import _ControlServer, serve_control
from tools.chaos_proxy.flow import _Flow


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
                target=serve_control,
                args=(self._control, self._stopping),
                name="chaos-control",
                daemon=True,
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
