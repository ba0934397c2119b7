"""The last lines and the exit of a dying process, written so that nothing can hold them up.

A stalled consumer must exit 70 even when stdout is a pipe nobody reads, a stopped terminal or
a full disk: the exit is armed first (`arm_exit`, its own thread), then every line is a
`bounded_write` (poll, then writes of at most PIPE_BUF bytes, until a deadline), built without
the logging machinery (`json_log_line`), whose locks a blocked write may hold.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import redis_url

LAST_WORDS_DEADLINE = 2.0  # seconds the dying watchdog may spend writing; the exit comes anyway
LAST_WORDS_BUDGET = 64 * 1024  # bytes it may write per stream (the stacks are cut to fit)


def bounded_write(fd: int, data: bytes, deadline: float, budget: int = LAST_WORDS_BUDGET) -> int:
    """Write at most `budget` bytes of `data` to `fd` before monotonic `deadline`; never block.

    poll() says when `fd` takes more, and each write is at most PIPE_BUF bytes, which a pipe
    that poll() calls writable takes whole: a pipe nobody reads, a stopped terminal or a full
    disk cost at most the deadline. The fd's flags are left alone (they are shared with other
    processes). Returns the number of bytes written; an error just ends the writing.
    """
    data = data[:budget]
    written = 0
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
    except (OSError, ValueError):
        return 0
    while written < len(data):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            events = poller.poll(max(1, int(left * 1000)))
        except OSError:
            break
        if not events or events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            break
        try:
            written += os.write(fd, data[written : written + select.PIPE_BUF])
        except BlockingIOError:
            continue
        except OSError:
            break
    return written


def log_fd() -> int:
    """The fd the process logs to (the root handler's stream), for writes that bypass logging."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            return int(stream.fileno())  # type: ignore[union-attr]
    return 1


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def json_log_line(level: str, event: str, logger: str = "taskd", **fields: Any) -> bytes:
    """One log line as the JSON renderer would write it, built without the logging machinery."""
    head = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "level": level,
        "event": event,
        "logger": logger,
    }
    body = {**head, **fields}
    for key, value in body.items():  # same last line of defence as the logging pipeline
        if isinstance(value, str) and "://" in value and "@" in value:
            body[key] = redis_url.redact(value)
    return (json.dumps(body, default=str) + "\n").encode("utf-8", "backslashreplace")


def last_words(
    event: str,
    fields: dict[str, Any],
    stacks: str,
    deadline: float,
    budget: int = LAST_WORDS_BUDGET,
) -> None:
    """The final log line (with `stacks`, cut to fit `budget`) and the stacks on stderr.

    Every write is a `bounded_write`: when stdout or stderr is blocked the words are lost,
    never the exit that follows. The plain-text stacks go to stderr only when it is not the
    log stream itself (supervisord's redirect_stderr, 2>&1), so they are not written twice.
    """
    fd = log_fd()
    room = max(0, budget - 4096)  # what the other fields leave for the stacks
    cut = stacks if len(stacks) <= room else stacks[:room] + "\n[stacks cut at the byte budget]"
    line = json_log_line("critical", event, **fields, stacks=cut)
    if _same_file(fd, 2):
        bounded_write(fd, line, deadline, budget)
        return
    # each stream gets half the time: a blocked stdout must not silence stderr too
    bounded_write(fd, line, time.monotonic() + (deadline - time.monotonic()) / 2, budget)
    bounded_write(2, (stacks + "\n").encode("utf-8", "backslashreplace"), deadline, budget)


def arm_exit(action: Callable[[], None], after: float) -> threading.Thread:
    """Arrange `action` (the exit) to run in `after` seconds from its own thread, come what may.

    Started before any last words are written: if a write blocks in spite of poll() (a hung
    NFS file, a C library holding a lock), this thread still ends the process.
    """

    def fire() -> None:
        time.sleep(after)
        action()

    thread = threading.Thread(target=fire, name="taskd-exit", daemon=True)
    thread.start()
    return thread
