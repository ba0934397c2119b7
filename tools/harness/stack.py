"""A real supervisord running a temp copy of the shipped conf/supervisord.conf on free ports.

The whole production layout (redis, consumers, subscriber, web, watchdog) as the README starts
it, moved to free loopback ports and a temp root, with the handler a test or rehearsal names.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xmlrpc.client import ServerProxy

from supervisor.xmlrpc import SupervisorTransport

from tools.harness.ports import free_port, free_port_block
from tools.harness.processes import end_process, pids_mentioning
from tools.harness.waiting import poll_until, wait_until

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
if not (VENV_BIN / "supervisord").exists():  # run by a venv's python without activating it
    VENV_BIN = Path(sys.executable).parent
DEFAULT_PROGRAMS = ("redis", "consumer_00", "consumer_01")


class Stack:
    """supervisord + redis + consumers + subscriber + web + watchdog, from the shipped conf.

    `pythonpath` is prepended to the children's PYTHONPATH (where `handler` lives); `env` is
    added to their environment (TASKD_* settings, a handler's record file).
    """

    def __init__(
        self, handler: str, pythonpath: Sequence[Path] = (), env: dict[str, str] | None = None
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="taskd-stack-"))
        self.redis_port = free_port()
        self.web_port = free_port()
        self.metrics_prefix = free_port_block(10)
        self.subscriber_metrics = free_port()
        self.watchdog_metrics = free_port()
        for sub in ("conf", "var/run", "var/log", "var/redis"):
            (self.root / sub).mkdir(parents=True)
        (self.root / ".venv").symlink_to(VENV_BIN.parent)
        text = (ROOT / "conf" / "supervisord.conf").read_text()
        text = text.replace("16379", str(self.redis_port))
        text = text.replace(
            "--metrics-port 186%(process_num)02d",
            f"--metrics-port {self.metrics_prefix}%(process_num)02d",
        )
        text = text.replace("--metrics-port 18650", f"--metrics-port {self.subscriber_metrics}")
        text = text.replace("--metrics-port 18690", f"--metrics-port {self.watchdog_metrics}")
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{self.web_port}")
        text = re.sub(r"--handler daemon\.handlers:log", f"--handler {handler}", text)
        self.conf = self.root / "conf" / "supervisord.conf"
        self.conf.write_text(text)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        self.env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(ROOT)])
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def metrics_port(self, process_num: int) -> int:
        """The metrics port of consumer_<process_num>."""
        return self.metrics_prefix * 100 + process_num

    def start(self, programs: tuple[str, ...] = DEFAULT_PROGRAMS) -> Stack:
        """Start supervisord; return once `programs` are all RUNNING."""
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-n", "-c", str(self.conf)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: (self.root / "var/run/supervisor.sock").exists(), 15, "supervisord")
        try:
            wait_until(lambda: all(self.state(p) == "RUNNING" for p in programs), 30, "RUNNING")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.states()}") from None
        return self

    def rpc(self) -> Any:
        """supervisord's XML-RPC `supervisor` namespace, over its unix socket."""
        transport = SupervisorTransport("", "", f"unix://{self.root}/var/run/supervisor.sock")
        return ServerProxy("http://127.0.0.1", transport).supervisor

    def infos(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.rpc().getAllProcessInfo()}

    def states(self) -> dict[str, str]:
        """Every process's state and, for the ones not running, why (for failure messages)."""
        return {
            n: f"{i['statename']} {i.get('spawnerr', '')} {self.log(n + '.log')[-300:]}".strip()
            if i["statename"] != "RUNNING"
            else "RUNNING"
            for n, i in self.infos().items()
        }

    def state(self, name: str) -> str:
        return str(self.infos().get(name, {}).get("statename", "ABSENT"))

    def pid(self, name: str) -> int:
        return int(self.infos()[name]["pid"])

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """`supervisorctl -c <conf> <args>`, as an operator types it."""
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def log(self, name: str) -> str:
        path = self.root / "var" / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """supervisord stops its programs; whatever a broken run left is killed; root removed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                end_process(self.proc, 0.1, "supervisord")
        # children of a killed supervisord: found by the temp root in their command line
        for pid in pids_mentioning(str(self.root)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        poll_until(lambda: not pids_mentioning(str(self.root)), 5)
        shutil.rmtree(self.root, ignore_errors=True)
