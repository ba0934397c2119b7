"""`supervisord -c conf/supervisord.conf` as the README says, from a fresh clone, without make.

The clone gets only what git tracks, so var/log, var/run and var/redis (which supervisord and
Redis need before they can start) must come with the checkout. The shipped ports are fixed
(16379, 18600.., 18650, 18690, 8000); the copy is moved to free ports, as tests/stack.py does,
so this test neither meets a developer's `make run` stack nor the tests running beside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, wait_until
from tools.harness.ports import free_port, free_port_block
from tools.harness.stack import VENV_BIN

PROGRAMS = (
    "redis",
    "consumer:consumer_00",
    "consumer:consumer_01",
    "subscriber",
    "web",
    "watchdog",
)


def move_to_free_ports(conf: Path) -> None:
    """Rewrite only the port numbers of the shipped configuration."""
    text = conf.read_text()
    text = text.replace("16379", str(free_port()))
    text = text.replace("--metrics-port 186%(", f"--metrics-port {free_port_block(10)}%(")
    text = text.replace("--metrics-port 18650", f"--metrics-port {free_port()}")
    text = text.replace("--metrics-port 18690", f"--metrics-port {free_port()}")
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")
    settings = "\n".join(line for line in text.splitlines() if not line.startswith(";"))
    assert not re.search(r"16379|186[0-9]{2}\b|:8000\b", settings), "a fixed port is left"
    conf.write_text(text)


def states(checkout: Path, env: dict[str, str]) -> dict[str, str]:
    """{process: state} from `supervisorctl status`, as an operator reads it."""
    out = subprocess.run(
        [".venv/bin/supervisorctl", "-c", "conf/supervisord.conf", "status"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return {f[0]: f[1] for line in out.splitlines() if len(f := line.split()) >= 2}


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie of ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A fresh `git clone` of this repository, its .venv a symlink to the real one.

    In a short folder of its own: supervisord's socket path (conf/../var/run/supervisor.sock)
    must fit AF_UNIX's 107 bytes, which pytest's per-test temp folders under xdist do not.
    """
    short = Path(tempfile.mkdtemp(prefix="tdc-", dir="/tmp"))
    dest = short / "taskd"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (dest / ".venv").symlink_to(VENV_BIN.parent)
    move_to_free_ports(dest / "conf" / "supervisord.conf")
    try:
        yield dest
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_supervisord_started_by_hand_from_a_fresh_clone_runs_every_program(checkout: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    out = (checkout.parent / "supervisord.out").open("w")
    pids: list[int] = []
    pidfile = checkout / "var" / "run" / "supervisord.pid"
    try:
        # exactly the README's command, from the checkout; supervisord daemonizes
        started = subprocess.run(
            [".venv/bin/supervisord", "-c", "conf/supervisord.conf"],
            cwd=checkout,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        assert started.returncode == 0, (checkout.parent / "supervisord.out").read_text()
        pids.append(int(wait_until(lambda: pidfile.read_text().strip(), 15, "the pid file")))
        try:
            wait_until(
                lambda: all(states(checkout, env).get(p) == "RUNNING" for p in PROGRAMS),
                60,
                "every program RUNNING",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {states(checkout, env)}") from None
        assert (checkout / "var" / "log" / "supervisord.log").stat().st_size > 0
        assert any((checkout / "var" / "redis").iterdir()), "Redis wrote nothing to var/redis"
        down = subprocess.run(
            [".venv/bin/supervisorctl", "-c", "conf/supervisord.conf", "shutdown"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert down.returncode == 0, down.stdout + down.stderr
        wait_until(lambda: not alive(pids[0]), 90, "supervisord to exit after shutdown")
    finally:
        out.close()
        for pid in pids:  # a failed run: stop the supervisord this test started, by its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda p=pid: not alive(p), 60, "supervisord to stop")  # type: ignore[misc]
