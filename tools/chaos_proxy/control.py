"""The proxy's HTTP control API: GET/PUT /mode, PUT /mode/<name>, GET /healthz."""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tools.chaos_proxy.base import _MAX_BODY, _POLL_S, log

if TYPE_CHECKING:
    from tools.chaos_proxy.proxy import ChaosProxy


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


def serve_control(server: _ControlServer, stopping: threading.Event) -> None:
    """The control thread: answer requests until `stopping` is set, then close the server."""
    try:
        while not stopping.is_set():
            server.handle_request()  # returns after server.timeout when idle
    except Exception:
        log.exception("control API crashed")
    finally:
        server.server_close()
