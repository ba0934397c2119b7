"""`taskd watchdog`: a supervisord event listener that restarts frozen taskd processes.

The stall detector thread cannot help a process that is frozen as a whole (SIGSTOP,
a C extension holding the GIL, a machine-level stall): its progress file stops changing.
On every TICK_5 this listener gathers each RUNNING process's state over XML-RPC and its
progress file, decides in a pure function (`decide`), and acts through XML-RPC: SIGABRT
(faulthandler dumps the stacks) and SIGCONT, then SIGKILL if needed, then start again.

Staleness is judged on the listener's monotonic clock: the file counts as stale when its content
(a sequence number changes on every write) has not changed for the process's stall timeout +
grace. Wall-clock times are never compared, so a clock step (NTP, a VM resumed, a wrong RTC
corrected) neither restarts healthy processes nor hides frozen ones.

Protocol (supervisor's childutils): READY, a header line, a payload, ``RESULT 2\\nOK``.
stdout carries only that protocol; every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, start_http_server
from supervisor import childutils

from daemon.liveness import enable_stack_dumps, read_progress_file

RPC_DEADLINE = 10.0  # seconds any XML-RPC call to supervisord may take
EXIT_WAIT = 3.0  # seconds to wait for a signalled process to go

REGISTRY = CollectorRegistry()
RESTARTS = Counter(
    "taskd_watchdog_restarts", "Processes restarted by the watchdog", ["process"], registry=REGISTRY
)


@dataclass(frozen=True)
class Verdict:
    """What to do about one process, and why."""

    restart: bool
    reason: str
    heartbeat_age: float | None = None


@dataclass(frozen=True)
class Seen:
    """What the listener remembers of one process, on its own monotonic clock.

    `pid_since`: when this pid was first seen RUNNING; `content`: the progress file as last
    read (its `seq` changes on every write); `changed_at`: when that content last changed.
    No wall-clock time is compared: a clock step neither ages nor freshens a heartbeat.
    """

    pid: int | None
    pid_since: float
    content: dict[str, Any] | None
    changed_at: float


def observe(
    previous: Seen | None, info: dict[str, Any], heartbeat: dict[str, Any] | None, now: float
) -> Seen:
    """Pure: the memory after one tick (`now` is monotonic). A new pid starts a new memory."""
    pid = info.get("pid")
    if previous is None or previous.pid != pid:
        return Seen(pid, now, heartbeat, now)
    if heartbeat != previous.content:
        return Seen(pid, previous.pid_since, heartbeat, now)
    return previous


def decide(
    info: dict[str, Any],
    heartbeat: dict[str, Any] | None,
    now: float,
    grace: float,
    startup_timeout: float | None = None,
    seen: Seen | None = None,
) -> Verdict:
    """Pure decision for one supervisord process (getProcessInfo dict) and its heartbeat.

    `now` is the listener's monotonic clock and `seen` its memory of the process after this
    tick (`observe`; None = seen for the first time now). The heartbeat is stale when its
    content has not changed for longer than the process's stall timeout + `grace`: the
    wall-clock `time` inside the file is never compared with anything. A process without a
    progress file is left alone, unless `startup_timeout` is given (its group is watched
    explicitly) and it has run that long, as far as this listener saw, without writing one.
    """
    if info.get("statename") != "RUNNING":
        return Verdict(False, f"not running ({info.get('statename')})")
    if seen is None:
        seen = observe(None, info, heartbeat, now)
    running = now - seen.pid_since
    if heartbeat is None:
        if startup_timeout is not None and running > startup_timeout:
            return Verdict(True, f"no progress file after {running:.0f} s", running)
        return Verdict(False, "no progress file (not a taskd process, or not started yet)")
    limit = float(heartbeat.get("stall_timeout", 60.0)) + grace
    if heartbeat.get("pid") != info.get("pid"):
        # the file is from an earlier incarnation: judge the new one by how long it has run
        if running > limit:
            return Verdict(
                True, f"no heartbeat from pid {info.get('pid')} in {running:.0f} s", running
            )
        return Verdict(False, "starting", running)
    age = now - seen.changed_at
    if age > limit:
        return Verdict(
            True,
            f"heartbeat unchanged for {age:.0f} s, past stall timeout + grace {limit:g} s",
            age,
        )
    return Verdict(False, "fresh", age)


@dataclass
class RateLimit:
    """At most `limit` restarts of one process within `window` seconds."""

    limit: int
    window: float
    history: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, name: str, now: float) -> bool:
        times = self.history.setdefault(name, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class Watchdog:
    """Gathers state, decides, acts. `rpc` is supervisord's XML-RPC `supervisor` namespace."""

    def __init__(self, args: argparse.Namespace, rpc_factory: Any, log: Any) -> None:
        self.grace = args.grace
        self.startup_timeout = args.startup_timeout
        self.groups = set(args.group or [])
        self.heartbeat_dir = Path(args.heartbeat_dir or "var/run")
        self.limits = RateLimit(args.max_restarts, args.restart_window)
        self.rpc_factory = rpc_factory
        self.log = log
        self.seen: dict[str, Seen] = {}  # "group:name" -> what the last tick saw

    def check(self) -> None:
        """One round: every RUNNING process of the watched groups against its heartbeat."""
        rpc = self.rpc_factory()
        now = time.monotonic()
        memory: dict[str, Seen] = {}
        for info in rpc.supervisor.getAllProcessInfo():
            if self.groups and info.get("group") not in self.groups:
                continue
            full = f"{info.get('group')}:{info.get('name')}"
            path = self.heartbeat_dir / f"{info['name']}.json"
            heartbeat = read_progress_file(str(path))
            seen = memory[full] = observe(self.seen.get(full), info, heartbeat, now)
            startup = self.startup_timeout if self.groups else None
            verdict = decide(info, heartbeat, now, self.grace, startup, seen)
            if verdict.restart:
                self._restart(rpc, info, verdict, now)
        self.seen = memory  # processes gone from supervisord are forgotten

    def _restart(self, rpc: Any, info: dict[str, Any], verdict: Verdict, now: float) -> None:
        full = f"{info['group']}:{info['name']}"
        fields = {
            "process": full,
            "pid": info.get("pid"),
            "heartbeat_age": None
            if verdict.heartbeat_age is None
            else round(verdict.heartbeat_age, 1),
            "reason": verdict.reason,
        }
        if not self.limits.allow(full, now):
            self.log.error(
                "watchdog.restart_suppressed", note="restart rate limit reached", **fields
            )
            return
        self.log.warning("watchdog.restart", **fields)
        RESTARTS.labels(process=full).inc()
        pid = info.get("pid")
        for signame in ("ABRT", "CONT"):  # dump stacks (faulthandler); wake it if stopped
            self._quietly(rpc.supervisor.signalProcess, full, signame)
        if not self._gone(rpc, full, pid):
            self._quietly(rpc.supervisor.signalProcess, full, "KILL")
            self._gone(rpc, full, pid)
        state = self._quietly(rpc.supervisor.getProcessInfo, full) or {}
        if state.get("statename") not in ("RUNNING", "STARTING"):
            self._quietly(rpc.supervisor.startProcess, full, False)
        self.log.info("watchdog.restarted", process=full, old_pid=pid)

    def _gone(self, rpc: Any, full: str, pid: int | None) -> bool:
        deadline = time.monotonic() + EXIT_WAIT
        while time.monotonic() < deadline:
            state = self._quietly(rpc.supervisor.getProcessInfo, full) or {}
            if state.get("pid") != pid or state.get("statename") != "RUNNING":
                return True
            time.sleep(0.1)
        return False

    def _quietly(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - a fault (e.g. ALREADY_STARTED) is news only
            self.log.info(
                "watchdog.rpc_note", call=getattr(call, "_Method__name", "?"), error=str(exc)
            )
            return None


def serve_events(stdin: IO[str], stdout: IO[str], on_tick: Any, log: Any) -> int:
    """The event-listener loop; returns 0 when supervisord closes stdin."""
    while True:
        childutils.listener.ready(stdout)
        line = stdin.readline()
        if not line:
            log.info("watchdog.stdin_closed")
            return 0
        try:
            headers = childutils.get_headers(line)
            length = int(headers["len"])
            if length < 0:
                raise ValueError("negative len")
        except (ValueError, KeyError) as exc:
            log.warning("watchdog.malformed_header", line=line[:200], error=str(exc))
            childutils.listener.fail(stdout)
            continue
        payload = stdin.read(length)
        if len(payload) < length:
            log.warning("watchdog.truncated_event", expected=length, got=len(payload))
            return 0
        if headers.get("eventname", "").startswith("TICK"):
            try:
                on_tick()
            except Exception as exc:  # noqa: BLE001 - the listener must keep answering
                log.error("watchdog.check_failed", error=f"{type(exc).__name__}: {exc}")
        childutils.listener.ok(stdout)


def main(args: argparse.Namespace) -> int:
    """Entry of `taskd watchdog` (args from the CLI parser)."""
    import os

    from daemon.logs import configure_logging

    enable_stack_dumps()  # SIGABRT by an operator or supervisord: stacks on stderr, no core
    configure_logging("info", "json", stream=sys.stderr)
    socket.setdefaulttimeout(RPC_DEADLINE)  # XML-RPC over the unix socket has no deadline
    log = structlog.get_logger("taskd.watchdog")
    if getattr(args, "metrics_port", 0):
        try:
            start_http_server(args.metrics_port, addr="127.0.0.1", registry=REGISTRY)
        except OSError as exc:  # watching matters more than being scraped: go on without
            log.error("watchdog.metrics_unavailable", port=args.metrics_port, error=str(exc))
    environ = dict(os.environ)

    def rpc_factory() -> Any:
        return childutils.getRPCInterface(environ)

    watchdog = Watchdog(args, rpc_factory, log)
    log.info(
        "watchdog.started",
        grace=args.grace,
        groups=sorted(watchdog.groups),
        heartbeat_dir=str(watchdog.heartbeat_dir),
    )
    return serve_events(sys.stdin, sys.stdout, watchdog.check, log)
