"""scripts/load.sh with the real siege, against a real supervisord stack, on a fresh machine.

A fresh HOME makes siege's first run happen inside the test: it then writes
"New configuration template added to ~/.siege" on stdout, in front of its JSON summary.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Stack

SIEGE = shutil.which("siege") or "siege"
SCRIPTS = ("load.sh", "load_helpers.py")


@pytest.fixture
def stack() -> Iterator[Stack]:
    """The make-run stack (free ports) with the load script in its checkout's scripts/."""
    s = Stack(TASKD_BLOCK_TIMEOUT="1", TASKD_BACKOFF_CAP="0.5")
    (s.root / "scripts").mkdir()
    for name in SCRIPTS:
        shutil.copy2(ROOT / "scripts" / name, s.root / "scripts" / name)
    try:
        s.start(("redis", "consumer_00", "consumer_01", "web"))
        yield s
    finally:
        s.stop()


def fresh_env(stack: Stack, home: Path) -> dict[str, str]:
    """The stack's environment with no TASKD_* and a HOME siege has never seen."""
    home.mkdir()
    env = {k: v for k, v in stack.env.items() if not k.startswith("TASKD_")}
    env["HOME"] = str(home)
    return env


def test_first_run_on_a_fresh_home_checks_the_stack_it_was_started_against(
    stack: Stack, tmp_path: Path
) -> None:
    result = subprocess.run(
        ["bash", str(stack.root / "scripts" / "load.sh"), "--settle", "60"],
        cwd=stack.root,
        env=fresh_env(stack, tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    # no option named them: the web, Redis and both consumers came from the running stack
    for port in (stack.metrics_port(0), stack.metrics_port(1)):
        assert f"127.0.0.1:{port}/metrics" in result.stderr, out
    found = re.search(r"pushed (\d+), consumed (\d+) \(acked (\d+)", result.stdout)
    assert found, out
    pushed, consumed, acked = map(int, found.groups())
    assert pushed == consumed == acked == 50, out  # siege -c10 -r5 on /prodcons
    assert "result: no task lost" in result.stdout, out
    assert "not measured" not in out
    assert len(stack.done_bodies()) >= 50  # the subscriber records the /pubsub ones too


class _Ok(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200, for siege to have something to hit."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def summary(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "load_helpers.py"), "summary", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_summary_of_sieges_first_run_output_is_read(web: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rc = tmp_path / "siegerc"
    rc.write_text("json_output = true\nlogging = false\nparser = false\nconnection = close\n")
    env = {**os.environ, "HOME": str(home)}
    run = subprocess.run(
        [SIEGE, "-R", str(rc), "--no-parser", "-j", "-c2", "-r3", web],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "New configuration template" in run.stdout  # the first run's extra line
    out = tmp_path / "siege.out"
    out.write_text(run.stdout)
    result = summary(out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "0"]


@pytest.mark.parametrize(
    "text",
    ["", "New configuration template added to /root/.siege\n", "{ not json", '{"x": 1}\n'],
)
def test_unreadable_siege_output_is_one_line_not_a_traceback(text: str, tmp_path: Path) -> None:
    out = tmp_path / "siege.out"
    out.write_text(text)
    result = summary(out)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no JSON summary" in result.stderr
