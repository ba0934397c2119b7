"""The soak test's handler: records every task it handles in a file outside the Redis under test.

Run by the consumers (and the subscriber) of a soak stack as ``tools.soak.handler:handle``.
A task body is JSON ``{"id": 17, "t": <enqueue unix time>, "kind": "ok"|"fail"|"hang"}``; a
pub/sub message is ``{"p": 4, "t": <publish unix time>}``. Each handling appends one line

    <id> <enqueued> <handled> <pid> <worker> <outcome>

(``id`` is ``p<n>`` for a pub/sub message) with one O_APPEND write to
``$SOAK_RECORDS_DIR/<worker>.<pid>.rec``, so lines of concurrent processes never interleave
and a kill -9 loses nothing that was written. ``worker`` is ``$SUPERVISOR_PROCESS_NAME``.
The record is written before the handler returns: a task acked is a task recorded, and a task
recorded but not acked (the worker died in between) runs again and shows up as a duplicate.

Outcomes: ``ok`` (returns: ack), ``fail`` (raises: retried, then dead-lettered), ``hang``
(sleeps forever: the stall detector must exit the process with 70), ``msg`` (pub/sub).
A body that is not a soak task raises, so a foreign task ends in the dead letters, not eaten.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

RECORDS_ENV = "SOAK_RECORDS_DIR"
LOSSY_EVERY = 100  # handle_lossy drops the tasks whose id is a multiple of this

_fd: int | None = None
_fd_pid: int | None = None


class NotASoakTask(ValueError):
    """The body is not one the soak producer made (foreign task on the soak queue)."""


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode a soak task or pub/sub message; raises NotASoakTask for anything else."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise NotASoakTask(f"not a soak task (not JSON): {body[:80]!r}") from None
    if not isinstance(doc, dict) or not (isinstance(doc.get("id"), int) or "p" in doc):
        raise NotASoakTask(f"not a soak task (no integer id): {body[:80]!r}")
    return doc


def format_record(
    task_id: str, enqueued: float, handled: float, pid: int, worker: str, outcome: str
) -> str:
    """One record line (the format tools.soak.records parses)."""
    return f"{task_id} {enqueued:.6f} {handled:.6f} {pid} {worker} {outcome}\n"


def _records_fd() -> int:
    global _fd, _fd_pid
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:  # opened once per process (and again after a fork)
        directory = os.environ.get(RECORDS_ENV)
        if not directory:
            raise RuntimeError(f"{RECORDS_ENV} is not set: the soak handler has nowhere to record")
        worker = os.environ.get("SUPERVISOR_PROCESS_NAME") or "process"
        path = os.path.join(directory, f"{worker}.{pid}.rec")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = pid
    return _fd


def _record(task_id: str, enqueued: float, outcome: str) -> None:
    worker = os.environ.get("SUPERVISOR_PROCESS_NAME") or "process"
    line = format_record(task_id, enqueued, time.time(), os.getpid(), worker, outcome)
    os.write(_records_fd(), line.encode("ascii", "replace"))


def handle(body: bytes) -> None:
    """Record the task, then act out its kind: ok returns, fail raises, hang never returns."""
    doc = parse_body(body)
    enqueued = float(doc.get("t", 0.0))
    if "p" in doc:
        _record(f"p{doc['p']}", enqueued, "msg")
        return
    kind = doc.get("kind", "ok")
    task_id = str(doc["id"])
    if kind == "fail":
        _record(task_id, enqueued, "fail")
        raise RuntimeError(f"soak task {task_id} is designed to fail")
    if kind == "hang":
        _record(task_id, enqueued, "hang")
        while True:  # the stall detector (--task-timeout) must end this process
            time.sleep(3600)
    _record(task_id, enqueued, "ok")


def handle_lossy(body: bytes) -> None:
    """Test-only: like `handle`, but silently drops every 100th task (proves a loss is seen)."""
    doc = parse_body(body)
    task_id = doc.get("id")
    if doc.get("kind", "ok") == "ok" and isinstance(task_id, int) and task_id % LOSSY_EVERY == 0:
        return  # acked, never recorded: exactly the bug a soak must catch
    handle(body)
