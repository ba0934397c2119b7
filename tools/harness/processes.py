"""Child processes the harness starts: their own session, gone with their parent, ended in time.

A child in its own session does not get the Ctrl-C meant for the runner (which stops it in
order); Linux's parent-death signal ends it even when the runner dies by kill -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _parent_death_hook() -> Callable[[], None] | None:
    """preexec_fn asking Linux to SIGTERM the child when its parent dies (even by kill -9)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now, not in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


_DIE_WITH_PARENT = _parent_death_hook() if sys.platform.startswith("linux") else None


def spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 - prepared before any thread forks
        )


def end_process(
    proc: subprocess.Popen[bytes] | None,
    grace: float,
    name: str,
    hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SIGCONT, SIGTERM, wait up to `grace` s (less once `hurry()`), then SIGKILL: bounded."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        proc.terminate()
    deadline = time.monotonic() + max(0.1, grace)
    while proc.poll() is None and time.monotonic() < deadline and not hurry():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.2)
    if proc.poll() is None:
        print(f"harness: {name} (pid {proc.pid}) still running; killing it", file=sys.stderr)
        kill9(proc)


def kill9(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL and reap (bounded)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a unique run folder): leftovers to end."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as handle:
            if text.encode() in handle.read():
                found.append(int(entry))
    return found
