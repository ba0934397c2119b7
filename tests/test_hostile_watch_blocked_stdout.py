"""The stall detector exits 70 even when stdout is a pipe nobody reads.

A blocking log driver, `taskd consume | less`, a full disk: every write to stdout blocks. The
watchdog must not log before it acts, or it blocks with the loop and exit 70 never comes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from conftest import ROOT, DaemonFactory, RedisServer

QUEUE = "hostile-watch-blocked"
SHORT = [
    "--block-timeout", "0.5",
    "--retry-base", "0.05",
    "--retry-cap", "0.2",
    "--backoff-cap", "0.5",
    "--backoff-base", "0.05",
]  # fmt: skip


def start_unread(
    taskd: DaemonFactory, url: str, stderr: int | IO[bytes], *args: str
) -> subprocess.Popen[bytes]:
    """`taskd consume` whose stdout is a pipe this test holds open and never reads."""
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "consume", "--redis-url", url, "--queue", QUEUE,
         *SHORT, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=taskd.env(),
        cwd=str(ROOT),
    )  # fmt: skip


def exit_code_within(proc: subprocess.Popen[bytes], bound: float) -> tuple[int, float]:
    """(exit code, seconds taken); the process is killed if it is still there after `bound`."""
    started = time.monotonic()
    try:
        code = proc.wait(bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"still running {bound} s after start: the watchdog blocked") from None
    finally:
        assert proc.stdout is not None
        proc.stdout.close()
    return code, time.monotonic() - started


def test_task_timeout_exits_70_while_the_handler_is_blocked_on_a_full_stdout(
    redis_server: RedisServer, taskd: DaemonFactory, tmp_path: Path
) -> None:
    # one task that logs 1.6 MB: it blocks inside the logging handler once the pipe is full
    redis_server.client().lpush(QUEUE, "200:loud")
    err_path = tmp_path / "stderr.log"
    with open(err_path, "wb") as err:
        proc = start_unread(
            taskd, redis_server.url, err,
            "--handler", "handlers_for_tests:shout",
            "--task-timeout", "2",
        )  # fmt: skip
    # startup (~1 s) + task timeout 2 s + a watchdog tick 1 s + last words at most 2 s
    code, _ = exit_code_within(proc, 12)
    assert code == 70, (code, err_path.read_text(errors="replace")[-2000:])
    # stdout took none of the last words; stderr (a file) has the stacks, the handler's included
    stacks = err_path.read_text(errors="replace")
    assert "Thread" in stacks and " in shout" in stacks, stacks[-2000:]


def test_stall_timeout_exits_70_while_the_loop_is_blocked_logging_to_a_full_stdout(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    # thousands of quick tasks: the loop's own task.done lines fill the pipe, then it blocks
    # outside any handler (no task timing), so only --stall-timeout can fire
    redis_server.client().lpush(QUEUE, *[f"t{i}" for i in range(3000)])
    proc = start_unread(
        taskd, redis_server.url, subprocess.STDOUT,
        "--handler", "handlers_for_tests:record_fast",
        "--stall-timeout", "2", "--socket-timeout", "1",
        "--task-timeout", "600",
    )  # fmt: skip
    code, _ = exit_code_within(proc, 15)
    assert code == 70
    assert redis_server.client().llen(QUEUE) > 0  # it was stuck, not done
