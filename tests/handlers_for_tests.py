"""Handlers used by the tests' taskd subprocesses. They record to $TEST_HANDLER_RECORD.

Body grammar: ``name`` succeeds at once; ``slow:<seconds>:name`` sleeps first;
``fail:name`` always raises; ``hang:name`` sleeps forever; ``crash:name`` kills the process.
Each run writes "<pid> start <body>" and, on success, "<pid> done <body>" (O_APPEND lines).
"""

from __future__ import annotations

import os
import time


def _write(phase: str, body: bytes) -> None:
    line = f"{os.getpid()} {phase} {body.decode('utf-8', 'replace')}\n".encode()
    fd = os.open(os.environ["TEST_HANDLER_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def record(body: bytes) -> None:
    """Record the task, acting out the fault its body asks for."""
    _write("start", body)
    text = body.decode("utf-8", "replace")
    if text.startswith("slow:"):
        time.sleep(float(text.split(":")[1]))
    elif text.startswith("fail:"):
        raise RuntimeError(f"asked to fail: {text}")
    elif text.startswith("hang:"):
        while True:
            time.sleep(3600)
    elif text.startswith("crash:"):
        os._exit(3)
    _write("done", body)


def record_fast(body: bytes) -> None:
    """Only the 'done' line: for many-task tests."""
    _write("done", body)


def slow_fail(body: bytes) -> None:
    """Record, sleep the seconds in ``<seconds>:name``, then fail."""
    _write("start", body)
    time.sleep(float(body.decode().split(":")[0]))
    raise RuntimeError(f"failed after sleeping: {body!r}")


def raise_surrogate(body: bytes) -> None:
    """Fail with an error whose text holds a lone surrogate (a surrogate-escaped file name),
    unless the body is ``ok``."""
    _write("start", body)
    if body != b"ok":
        name = os.fsdecode(b"/nonexistent/\xff-" + body)  # '\udcff' in the text
        raise FileNotFoundError(f"{name}: no such file or directory")
    _write("done", body)
