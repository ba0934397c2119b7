"""Every numeric flag is range-checked: one line, exit 78, never a traceback or a fake outage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, DaemonFactory, free_port

HUGE = "9" * 23  # beyond any C long


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def assert_refused(done: subprocess.CompletedProcess[bytes], *expected: str) -> None:
    assert done.returncode == 78, done.stderr
    (line,) = done.stderr.decode().splitlines()
    for text in expected:
        assert text in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--metrics-port", "70000"], "expected a TCP port 1-65535"),
        (["--metrics-port", "-1"], "expected a TCP port 1-65535"),
        (["--metrics-port", "\u0663"], "expected a TCP port 1-65535"),  # an Arabic-Indic 3
        (["--grace", "inf"], "at most 31536000"),
        (["--restart-window", "nan"], "expected seconds > 0"),
        (["--startup-timeout", "1e400"], "at most 31536000"),
        (["--max-restarts", "0"], "expected a whole number 1-10000"),
        (["--max-restarts", HUGE], "expected a whole number 1-10000"),
    ],
)
def test_watchdog_flag_out_of_range_is_one_line_exit_78(
    taskd: DaemonFactory, args: list[str], expected: str
) -> None:
    done = taskd.run("watchdog", *args, input=b"")
    assert_refused(done, f"argument {args[0]}", expected)


@pytest.mark.parametrize("limit", ["0", "-3", HUGE, "1.5"])
def test_dead_limit_out_of_range_is_one_line_exit_78(taskd: DaemonFactory, limit: str) -> None:
    done = taskd.run("dead", "list", "--redis-url", dead_url(), "--limit", limit)
    assert_refused(done, "argument --limit", "expected a whole number 1-1000000")


@pytest.mark.parametrize(
    ("verb", "args", "expected"),
    [
        # beyond Linux's limits setsockopt fails with EINVAL: it looked like an outage
        ("enqueue", ["--keepalive-idle", "99999999"], "--keepalive-idle=99999999"),
        ("enqueue", ["--keepalive-interval", "40000"], "--keepalive-interval=40000"),
        ("consume", ["--keepalive-count", "1000"], "--keepalive-count=1000"),
        # a socket timeout past time_t crashed with OverflowError
        ("enqueue", ["--connect-timeout", "1e300"], "--connect-timeout=1e+300"),
        ("web", ["--drain-timeout", "1e300"], "--drain-timeout=1e+300"),
        ("enqueue", ["--wait-replicas", "1", "--wait-timeout", "1e17"], "--wait-timeout=1e+17"),
        ("enqueue", ["--wait-replicas", HUGE], f"--wait-replicas={HUGE}"),
        ("publish", ["--wait-replicas", "1001"], "--wait-replicas=1001"),
        ("consume", ["--max-attempts", "10000000"], "--max-attempts=10000000"),
        ("subscribe", ["--ping-interval", "1e20"], "--ping-interval=1e+20"),
        ("status", ["--health-check-interval", "1e300"], "--health-check-interval=1e+300"),
    ],
)
def test_setting_out_of_range_is_one_line_exit_78(
    taskd: DaemonFactory, verb: str, args: list[str], expected: str
) -> None:
    handler = ["--handler", "daemon.handlers:noop"] if verb in ("consume", "subscribe") else []
    bodies = ["x"] if verb in ("enqueue", "publish") else []
    done = taskd.run(verb, "--redis-url", dead_url(), *handler, *args, *bodies)
    assert_refused(done, f"taskd {verb}: error: {expected}", "expected")


def test_setting_out_of_range_from_the_environment_is_refused_too(taskd: DaemonFactory) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", "--redis-url", dead_url(), "x"],
        capture_output=True,
        env=taskd.env(TASKD_KEEPALIVE_COUNT="128"),
        cwd=str(ROOT),
        timeout=30,
    )
    assert_refused(done, "TASKD_KEEPALIVE_COUNT", "expected a whole number 1-127")
