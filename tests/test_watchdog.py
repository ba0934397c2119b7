"""The outside watchdog: its decision as a pure function, and its protocol manners."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from daemon.watchdog import RateLimit, Seen, decide

RUNNING = {"statename": "RUNNING", "pid": 42, "start": 1000.0, "name": "consumer_00"}


def test_fresh_heartbeat_is_left_alone() -> None:
    hb = {"pid": 42, "time": 1995.0, "stall_timeout": 60}
    assert not decide(RUNNING, hb, now=2000.0, grace=5).restart


def test_stale_heartbeat_past_stall_timeout_plus_grace_restarts() -> None:
    # staleness = unchanged on the listener's monotonic clock (it last changed at 1930)
    hb = {"pid": 42, "seq": 7, "time": 1930.0, "stall_timeout": 60}
    seen = Seen(pid=42, pid_since=1000.0, content=hb, changed_at=1930.0)
    verdict = decide(RUNNING, hb, now=2000.0, grace=5, seen=seen)
    assert verdict.restart and verdict.heartbeat_age == 70.0


def test_heartbeat_of_an_earlier_pid_judges_the_new_process_by_its_age() -> None:
    old = {"pid": 41, "time": 1.0, "stall_timeout": 60}
    young = Seen(pid=42, pid_since=1990.0, content=old, changed_at=1990.0)
    aged = Seen(pid=42, pid_since=1900.0, content=old, changed_at=1900.0)
    assert not decide({**RUNNING, "start": 1990.0}, old, now=2000.0, grace=5, seen=young).restart
    assert decide({**RUNNING, "start": 1900.0}, old, now=2000.0, grace=5, seen=aged).restart


def test_processes_without_heartbeat_or_not_running_are_skipped() -> None:
    assert not decide(RUNNING, None, now=2000.0, grace=5).restart
    assert not decide({**RUNNING, "statename": "STOPPED"}, {"pid": 42, "time": 0}, 2000, 5).restart


def test_restarts_are_limited_per_process_within_a_moving_window() -> None:
    limit = RateLimit(limit=2, window=100)
    assert [limit.allow("a", t) for t in (0, 1, 2)] == [True, True, False]
    assert limit.allow("b", 2)
    assert limit.allow("a", 150)  # the window moved on


def _listener(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "watchdog", "--heartbeat-dir", "/nonexistent"],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=str(ROOT),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


def _event(name: str, payload: str = "when:1") -> bytes:
    header = (
        f"ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1 "
        f"eventname:{name} len:{len(payload)}\n"
    )
    return (header + payload).encode()


def test_listener_survives_garbage_and_speaks_only_the_protocol_on_stdout() -> None:
    feed = (
        b"garbage without colons\n"
        + _event("TICK_5")  # no supervisord to ask: logged, still answered OK
        + b"len:notanumber\n"
        + _event("PROCESS_STATE_RUNNING", "processname:x groupname:x from_state:STARTING pid:1")
        + b"ver:3.0 eventname:TICK_5 len:-4\n"
        + _event("TICK_5")
        + b"ver:3.0 eventname:TICK_5 len:50\nshort"  # truncated by EOF
    )
    result = _listener(feed)
    assert result.returncode == 0
    out = result.stdout.decode()
    # READY before each event; FAIL for the 3 malformed headers, OK for the 3 good events
    tokens = (
        out.replace("READY\n", "R|")
        .replace("RESULT 2\nOK", "OK|")
        .replace("RESULT 4\nFAIL", "FAIL|")
    )
    assert tokens == "R|FAIL|R|OK|R|FAIL|R|OK|R|FAIL|R|OK|R|", out
    err = result.stderr.decode()
    assert "watchdog.malformed_header" in err and "watchdog.truncated_event" in err
    assert "watchdog.check_failed" in err
    assert "Traceback" not in err


def test_watched_process_that_never_wrote_a_heartbeat_is_restarted_after_startup_timeout() -> None:
    young = {**RUNNING, "start": 1990.0}
    old = {**RUNNING, "start": 1800.0}
    seen_young = Seen(pid=42, pid_since=1990.0, content=None, changed_at=1990.0)
    seen_old = Seen(pid=42, pid_since=1800.0, content=None, changed_at=1800.0)
    assert not decide(young, None, 2000.0, grace=5, startup_timeout=120, seen=seen_young).restart
    assert decide(old, None, now=2000.0, grace=5, startup_timeout=120, seen=seen_old).restart
