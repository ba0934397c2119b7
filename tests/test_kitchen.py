"""The kitchen demo (examples/kitchen.py) stops on time, on Ctrl-C, and loses no dish."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, wait_until

KITCHEN = str(ROOT / "examples" / "kitchen.py")
MADE = re.compile(r"^cook Thread-[1-3] made [0-8] --- \d+ left unsold$")
ATE = re.compile(r"^eater Thread-[45] ate [0-8] --- \d+ left to eat$")
SUMMARY = re.compile(r"^made (\d+), eaten (\d+), left (\d+)$")


def balanced_summary(lines: list[str]) -> tuple[int, int, int]:
    """The last line, checked: made == eaten + left, and it agrees with the lines above it."""
    match = SUMMARY.match(lines[-1])
    assert match, f"last line is not the summary: {lines[-1]!r}"
    made, eaten, left = (int(g) for g in match.groups())
    assert made == eaten + left
    assert made == sum(1 for line in lines if MADE.match(line))
    assert eaten == sum(1 for line in lines if ATE.match(line))
    return made, eaten, left


def test_kitchen_runs_for_the_given_time_then_stops_with_a_balanced_summary() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, KITCHEN, "--seconds", "2", "--max-sleep", "0.05", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=6,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert 2 <= elapsed < 6
    lines = done.stdout.splitlines()
    assert all(MADE.match(x) or ATE.match(x) for x in lines[:-1]), "only cook/eater lines"
    made, eaten, _left = balanced_summary(lines)
    assert made > 0 and eaten > 0


def test_ctrl_c_stops_the_kitchen_promptly_with_a_balanced_summary(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, KITCHEN, "--seconds", "60", "--max-sleep", "0.05"],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    lines: list[str] = []

    def read_all() -> None:  # keep reading, or a full pipe would stall the demo
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines, 10, "the first dish")
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        assert proc.wait(timeout=5) == 0, stderr.read_text()
        assert time.monotonic() - interrupted < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(5)
    made, _eaten, _left = balanced_summary([line.rstrip("\n") for line in lines])
    assert made > 0


def test_kitchen_help_describes_the_options() -> None:
    done = subprocess.run(
        [sys.executable, KITCHEN, "--help"], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0
    for option in ("--seconds", "--max-sleep", "--seed"):
        assert option in done.stdout
