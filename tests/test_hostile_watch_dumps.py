"""SIGABRT (what the outside watchdog sends) dumps every thread's stack and leaves no core file."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT, DaemonFactory, RedisServer, wait_until

QUEUE = "hostile-watch-dumps"


@contextlib.contextmanager
def core_files_allowed() -> Iterator[None]:
    """Children started inside may write core files (soft RLIMIT_CORE raised to the hard one).

    Without taskd's own RLIMIT_CORE=0 a SIGABRT would then leave a core file in its cwd.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def core_files(directory: Path, pid: int) -> list[Path]:
    return [p for p in (directory / "core", directory / f"core.{pid}") if p.exists()]


def core_limit(pid: int) -> str:
    """The 'Max core file size' row of /proc/<pid>/limits (soft and hard)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError("no core limit row")


def test_sigabrt_dumps_the_stacks_of_a_hung_consumer_and_writes_no_core(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    redis_server.client().lpush(QUEUE, "hang:abrt-me")
    with core_files_allowed():
        daemon = taskd.consume(
            redis_server.url,
            "--queue",
            QUEUE,
            "--handler",
            "handlers_for_tests:record",
            "--task-timeout",
            "600",
        )
    wait_until(lambda: any(p == "start" for _, p, _ in taskd.records()), 20, "the hang to start")
    assert core_limit(daemon.pid).startswith("0 "), core_limit(daemon.pid)
    daemon.signal(signal.SIGABRT)
    assert daemon.wait(20) == -signal.SIGABRT
    text = daemon.log_path.read_text(errors="replace")
    assert "Fatal Python error: Aborted" in text, text[-2000:]
    # every thread is dumped; the main thread's stack shows the handler that hangs
    assert text.count("Thread 0x") + text.count("Current thread 0x") >= 2, text[-3000:]
    assert 'handlers_for_tests.py", line' in text and " in record" in text, text[-3000:]
    assert 'consumer.py", line' in text  # the loop frame below the handler
    assert not core_files(ROOT, daemon.pid)


def test_sigabrt_dumps_the_stacks_of_the_watchdog_listener_and_writes_no_core(
    tmp_path: Path,
) -> None:
    with core_files_allowed():
        listener = subprocess.Popen(
            [sys.executable, "-m", "daemon", "watchdog", "--heartbeat-dir", str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "listener.err", "wb"),  # noqa: SIM115 - the child owns it
            cwd=str(tmp_path),
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"READY\n"  # waiting for an event on stdin
        assert core_limit(listener.pid).startswith("0 ")
        listener.send_signal(signal.SIGABRT)
        assert listener.wait(20) == -signal.SIGABRT
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)
    err = (tmp_path / "listener.err").read_text(errors="replace")
    assert "Fatal Python error: Aborted" in err and " in serve_events" in err, err[-2000:]
    assert not core_files(tmp_path, listener.pid)
