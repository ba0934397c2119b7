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

Modules: base (modes, limits, socket helpers), flow (one proxied connection), control (the
HTTP API), proxy (ChaosProxy), cli (`python -m tools.chaos_proxy`; see docs/chaos_proxy.md).
"""

from tools.chaos_proxy.base import BLACKHOLE, EX_CONFIG, LATENCY, MODES, PASS, REFUSE, RESET
from tools.chaos_proxy.cli import main
from tools.chaos_proxy.proxy import ChaosProxy

__all__ = [
    "BLACKHOLE",
    "EX_CONFIG",
    "LATENCY",
    "MODES",
    "PASS",
    "REFUSE",
    "RESET",
    "ChaosProxy",
    "main",
]
