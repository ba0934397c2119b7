"""The dying watchdog's writes are bounded, and its progress file carries a sequence number."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_until
from daemon.last_words import bounded_write, json_log_line
from daemon.liveness import Progress, StallDetector, read_progress_file


@pytest.fixture
def full_pipe() -> Iterator[tuple[int, int]]:
    """(read fd, write fd) of a pipe whose buffer is full; the write end is blocking."""
    read_fd, write_fd = os.pipe()
    flags = fcntl.fcntl(write_fd, fcntl.F_GETFL)
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_fd, b"x" * 65536)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags)  # blocking again, as stdout is
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_bounded_write_to_a_full_blocking_pipe_returns_by_its_deadline(
    full_pipe: tuple[int, int],
) -> None:
    _, write_fd = full_pipe
    started = time.monotonic()
    assert bounded_write(write_fd, b"y" * 100_000, started + 0.3) == 0
    assert time.monotonic() - started < 1.5


def test_bounded_write_writes_everything_a_reader_takes_within_its_budget() -> None:
    read_fd, write_fd = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    data = bytes(range(256)) * 1024  # 256 KiB: more than a pipe holds
    assert bounded_write(write_fd, data, time.monotonic() + 10, budget=200_000) == 200_000
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    assert bytes(got) == data[:200_000]


def test_bounded_write_to_a_closed_reader_gives_up_quietly() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    assert bounded_write(write_fd, b"z" * 10, time.monotonic() + 1) == 0
    os.close(write_fd)


def test_json_log_line_looks_like_the_logging_pipeline_and_redacts_urls() -> None:
    line = json_log_line("critical", "watchdog.stall", reason="r", url="redis://:s3cr/t@h:1/0")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert list(data)[:4] == ["timestamp", "level", "event", "logger"]
    assert data["event"] == "watchdog.stall" and data["timestamp"].endswith("Z")
    assert "s3cr" not in line.decode()


def test_heartbeat_file_has_a_sequence_number_that_advances(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    watchdog = StallDetector(Progress(), 60, 60, None, heartbeat_file=str(path), interval=0.02)
    watchdog.start()
    try:
        seqs = []

        def advanced() -> bool:
            hb = read_progress_file(str(path))
            if hb:
                seqs.append(hb["seq"])
            return len(set(seqs)) >= 3

        wait_until(advanced, 10, "three heartbeats", interval=0.01)
    finally:
        watchdog.stop()
        watchdog.join(5)
    assert seqs == sorted(seqs) and seqs[0] >= 1
    assert read_progress_file(str(path))["pid"] == os.getpid()  # type: ignore[index]


def test_stall_fires_once_even_when_the_last_words_cannot_be_written(
    full_pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit is armed before the words: it comes by the deadline whatever the writes do."""
    _, write_fd = full_pipe
    monkeypatch.setattr("daemon.last_words.log_fd", lambda: write_fd)
    fired: list[float] = []
    progress = Progress()
    progress.task_started("stuck")
    watchdog = StallDetector(
        progress, 60, 0.05, None, interval=0.02, on_stall=lambda: fired.append(time.monotonic()),
        last_words_deadline=0.5,
    )  # fmt: skip
    started = time.monotonic()
    watchdog.start()
    wait_until(lambda: fired, 10, "the stall to fire")
    watchdog.join(5)
    assert watchdog.exit_thread is not None
    watchdog.exit_thread.join(5)  # the armed exit's own turn has passed too: still one call
    assert len(fired) == 1 and fired[0] - started < 2.0
