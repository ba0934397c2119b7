"""The proxy's command line: `python -m tools.chaos_proxy --listen ... --target ...`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

from tools.chaos_proxy.base import EX_CONFIG, MODES, PASS, RESET, log
from tools.chaos_proxy.proxy import ChaosProxy

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
