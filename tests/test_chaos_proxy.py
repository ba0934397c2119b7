"""Tests for the TCP fault-injection proxy (tools/chaos_proxy).

Everything runs on loopback against an in-test echo server on a free port; no
conftest fixtures, no Redis.  Waits are deadline-polls, never long fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.chaos_proxy import ChaosProxy  # noqa: E402
from tools.harness import free_port, wait_until  # noqa: E402

SCRIPT = ROOT / "scripts" / "chaos_proxy.py"
SILENCE_S = 0.3  # how long "nothing arrives" is observed for black-hole checks


class EchoServer:
    """Threaded loopback echo server that records how each connection ended."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.endings: list[str] = []  # "eof" or "reset", one per finished connection
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> EchoServer:
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        ending = "stopped"
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    ending = "reset"
                    break
                if not data:
                    ending = "eof"
                    break
                conn.settimeout(5.0)
                conn.sendall(data)
                conn.settimeout(0.2)
        finally:
            conn.close()
            with self._lock:
                self.endings.append(ending)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(2.0)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[ChaosProxy]:
    p = ChaosProxy("127.0.0.1", echo.port).start()
    yield p
    p.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int, timeout: float = 3.0) -> bytes:
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out after {len(buf)}/{n} bytes"
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        assert chunk, f"unexpected EOF after {len(buf)}/{n} bytes"
        buf += chunk
    return bytes(buf)


def roundtrip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    return recv_exactly(sock, len(data))


def fastest_roundtrip(sock: socket.socket, tries: int = 3) -> float:
    best = float("inf")
    for _ in range(tries):
        start = time.monotonic()
        assert roundtrip(sock) == b"ping"
        best = min(best, time.monotonic() - start)
    return best


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives and the connection is not closed: recv times out (no EOF, no RST)."""
    sock.settimeout(SILENCE_S)
    with pytest.raises(TimeoutError):
        data = sock.recv(1)
        pytest.fail(f"expected silence, got {data!r} (b'' means EOF)")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=3.0) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


# --------------------------------------------------------------------- modes


def test_pass_forwards_both_ways_and_propagates_eof(proxy: ChaosProxy, echo: EchoServer) -> None:
    with connect(proxy.port) as c:
        assert roundtrip(c, b"hello") == b"hello"
        wait_until(lambda: proxy.flow_count() == 1, 3.0, "one open flow")

        payload = os.urandom(600_000)  # more than socket buffers: exercises backpressure
        sender = threading.Thread(target=c.sendall, args=(payload,), daemon=True)
        sender.start()
        assert recv_exactly(c, len(payload), timeout=10.0) == payload
        sender.join(2.0)

        c.shutdown(socket.SHUT_WR)  # client half-close must reach the server as FIN
        c.settimeout(3.0)
        assert c.recv(1) == b""  # echo server closed in response, and that FIN came back
    wait_until(lambda: proxy.flow_count() == 0, 3.0, "flow to close")
    assert echo.endings == ["eof"]


def test_blackhole_keeps_flows_open_but_dead_for_good(proxy: ChaosProxy, echo: EchoServer) -> None:
    c1 = connect(proxy.port)
    assert roundtrip(c1) == b"ping"

    proxy.set_mode("blackhole")
    assert proxy.mode == "blackhole"
    c1.sendall(b"lost")
    assert_silent(c1)

    # New connections are accepted but never reach the server.
    c2 = connect(proxy.port)
    c2.sendall(b"also lost")
    assert_silent(c2)
    assert echo.accepted == 1

    proxy.set_mode("pass")
    c1.sendall(b"still lost")
    assert_silent(c1)  # the NAT forgot this flow: it does not come back
    c2.sendall(b"still lost")
    assert_silent(c2)

    with connect(proxy.port) as c3:  # but a fresh flow works normally
        assert roundtrip(c3, b"fresh") == b"fresh"
    # Only c3's upstream ended; c1's server side never saw FIN or RST (half-open, as in prod).
    wait_until(lambda: echo.endings == ["eof"], 3.0, "c3 upstream to close")
    wait_until(lambda: proxy.flow_count() == 2, 3.0, "c1 and c2 to remain open")
    c1.close()
    c2.close()


def test_blackhole_sends_no_fin_or_rst_upstream(proxy: ChaosProxy, echo: EchoServer) -> None:
    c1 = connect(proxy.port)
    assert roundtrip(c1) == b"ping"
    proxy.set_mode("blackhole")
    c1.close()  # the client's FIN is swallowed by the black hole too
    time.sleep(SILENCE_S)
    assert echo.endings == []  # server never learned the flow ended
    assert proxy.flow_count() == 1


def test_reset_rsts_open_flows_then_behaves_as_pass(proxy: ChaosProxy, echo: EchoServer) -> None:
    c = connect(proxy.port)
    assert roundtrip(c) == b"ping"
    start = time.monotonic()
    proxy.set_mode("reset")
    c.settimeout(2.0)
    with pytest.raises(ConnectionResetError):
        c.recv(1)
    assert time.monotonic() - start < 1.0
    c.close()
    assert proxy.mode == "pass"
    wait_until(lambda: echo.endings == ["reset"], 3.0, "server side to see RST")
    assert proxy.flow_count() == 0
    with connect(proxy.port) as c2:
        assert roundtrip(c2, b"after") == b"after"


def test_latency_delays_round_trip_and_keeps_order(proxy: ChaosProxy) -> None:
    with connect(proxy.port) as c:
        assert fastest_roundtrip(c) < 0.2  # pass adds no delay (best of 3: CI hosts are noisy)

        proxy.set_mode("latency", latency_ms=150, jitter_ms=50)
        assert (proxy.mode, proxy.latency_ms, proxy.jitter_ms) == ("latency", 150, 50)
        start = time.monotonic()
        roundtrip(c)
        elapsed = time.monotonic() - start
        assert elapsed >= 2 * (0.150 - 0.050)  # each direction is delayed at least 100 ms
        assert elapsed < 2.0

        # Heavy jitter relative to latency: reordering would show up immediately.
        proxy.set_mode("latency", latency_ms=30, jitter_ms=25)
        chunks = [bytes([i]) * 10 for i in range(40)]
        for chunk in chunks:
            c.sendall(chunk)
            time.sleep(0.002)
        assert recv_exactly(c, 400, timeout=5.0) == b"".join(chunks)

        proxy.set_mode("pass")
        assert fastest_roundtrip(c) < 0.2  # delay is gone again


def test_refuse_gives_econnrefused_and_keeps_existing_flows(proxy: ChaosProxy) -> None:
    port = proxy.port
    with connect(port) as c1:
        assert roundtrip(c1) == b"ping"
        proxy.set_mode("refuse")
        assert proxy.mode == "refuse"
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        assert roundtrip(c1, b"existing") == b"existing"

        proxy.set_mode("pass")
        assert proxy.port == port
        with connect(port) as c2:
            assert roundtrip(c2, b"back") == b"back"


def test_upstream_down_resets_client_quickly() -> None:
    with ChaosProxy("127.0.0.1", free_port()) as p:
        try:
            c = connect(p.port)
        except ConnectionResetError:
            pass  # reset before the test could even read: quick indeed
        else:
            with c:
                c.settimeout(2.0)
                with pytest.raises(ConnectionResetError):
                    c.recv(1)
        wait_until(lambda: p.flow_count() == 0, 3.0, "failed flow to be dropped")


def test_stop_is_bounded_with_blackholed_flows(echo: EchoServer) -> None:
    p = ChaosProxy("127.0.0.1", echo.port).start()
    clients = [connect(p.port) for _ in range(3)]
    for c in clients:
        assert roundtrip(c) == b"ping"
    p.set_mode("blackhole")
    clients.append(connect(p.port))  # accepted while black-holed: no upstream
    for c in clients:
        c.sendall(b"into the void")
    wait_until(lambda: p.flow_count() == 4, 3.0, "four flows")

    start = time.monotonic()
    p.stop()
    assert time.monotonic() - start < 3.0
    assert p.flow_count() == 0
    for c in clients:
        c.settimeout(2.0)
        # stop() closes every client: EOF, or RST if its bytes were still unread.
        with contextlib.suppress(ConnectionResetError):
            assert c.recv(1) == b""
        c.close()
    p.stop()  # idempotent


def test_set_mode_and_constructor_validate_input() -> None:
    p = ChaosProxy("127.0.0.1", 6380)
    for bad in ("bogus", "", "PASS"):
        with pytest.raises(ValueError):
            p.set_mode(bad)
    for bad_ms in (-1, float("nan"), True, "10"):
        with pytest.raises(ValueError):
            p.set_mode("latency", latency_ms=bad_ms)  # type: ignore[arg-type]
    assert p.mode == "pass"
    p.set_mode("latency", latency_ms=10)  # allowed before start()
    assert (p.mode, p.latency_ms, p.jitter_ms) == ("latency", 10, 0)
    with pytest.raises(ValueError):
        ChaosProxy("127.0.0.1", 6380, control_port=0, control_host="0.0.0.0")
    with pytest.raises(ValueError):
        ChaosProxy("127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        _ = p.port  # not started


# ---------------------------------------------------------------- HTTP API


def test_http_api_changes_modes_and_rejects_bad_input(echo: EchoServer) -> None:
    with ChaosProxy("127.0.0.1", echo.port, control_port=0) as p:
        assert p.control_port
        base = f"http://127.0.0.1:{p.control_port}"
        assert http("GET", f"{base}/healthz")[0] == 200
        assert http("GET", f"{base}/mode") == (
            200,
            {"mode": "pass", "latency_ms": 0, "jitter_ms": 0, "flows": 0},
        )

        status, doc = http("PUT", f"{base}/mode", b'{"mode": "blackhole"}')
        assert (status, doc["mode"], p.mode) == (200, "blackhole", "blackhole")

        status, doc = http("PUT", f"{base}/mode/latency?latency_ms=120&jitter_ms=10")
        assert status == 200
        assert (doc["mode"], doc["latency_ms"], doc["jitter_ms"]) == ("latency", 120, 10)

        status, doc = http("PUT", f"{base}/mode", b'{"mode": "latency", "latency_ms": 50}')
        assert (status, doc["latency_ms"], doc["jitter_ms"]) == (200, 50, 10)

        with connect(p.port) as c:
            wait_until(lambda: p.flow_count() == 1, 3.0, "flow")
            status, doc = http("PUT", f"{base}/mode/reset")
            assert (status, doc["mode"], doc["flows"]) == (200, "pass", 0)
            c.settimeout(2.0)
            with pytest.raises(ConnectionResetError):
                c.recv(1)

        bad_requests = [
            ("PUT", "/mode", b"{nope"),
            ("PUT", "/mode", b'"blackhole"'),
            ("PUT", "/mode", b""),
            ("PUT", "/mode", b'{"mode": "bogus"}'),
            ("PUT", "/mode", b'{"mode": "latency", "latency_ms": -1}'),
            ("PUT", "/mode", b'{"mode": "latency", "latency": 5}'),
            ("PUT", "/mode/bogus", None),
            ("PUT", "/mode/latency?latency_ms=abc", None),
        ]
        for method, path, body in bad_requests:
            status, doc = http(method, base + path, body)
            assert status == 400, (path, body, status)
            assert doc["error"], (path, body)
        assert p.mode == "pass"  # nothing above changed the mode
        assert http("GET", f"{base}/nope")[0] == 404


# --------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=20
    )


def test_cli_help_exits_zero_and_explains_modes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("--listen", "--target", "--control", "blackhole", "reset", "latency", "refuse"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "127.0.0.1:0", "--target", "nonsense"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:99999"],
        ["--listen", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:6380", "--control", "192.0.2.1:0"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:6380", "--mode", "chaos"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:6380", "--latency-ms", "-5"],
    ],
)
def test_cli_bad_arguments_exit_78_with_one_line(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaos_proxy: error:"), result.stderr


def test_cli_listen_port_in_use_exits_78_with_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:6380")
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"chaos_proxy: error: cannot listen on 127.0.0.1:{port}: ")


def test_cli_runs_logs_and_stops_on_sigterm(echo: EchoServer) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{echo.port}",
            "--control",
            "127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump_stderr() -> None:
        for line in proc.stderr or []:
            lines.put(line)

    reader = threading.Thread(target=pump_stderr, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_for(pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + 10.0
        while True:
            for line in seen:
                if m := re.search(pattern, line):
                    return m
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no log line matching {pattern!r} in {seen}"
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=remaining))

    try:
        port = int(wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        control = int(wait_for(r"control API on http://127\.0\.0\.1:(\d+)").group(1))
        with connect(port) as c:
            assert roundtrip(c) == b"ping"
        wait_for(r"flow 1 open")
        wait_for(r"flow 1 close .*reason=closed")
        status, doc = http("PUT", f"http://127.0.0.1:{control}/mode/blackhole")
        assert (status, doc["mode"]) == (200, "blackhole")
        wait_for(r"mode pass -> blackhole")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5.0) == 0
        reader.join(2.0)
        while not lines.empty():
            seen.append(lines.get())
        assert not any("Traceback" in line for line in seen), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)
        if proc.stderr:
            proc.stderr.close()
