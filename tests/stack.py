"""A real supervisord running a temp copy of conf/supervisord.conf on free ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from xmlrpc.client import ServerProxy

from supervisor.xmlrpc import SupervisorTransport

from conftest import ROOT, TESTS, wait_until
from daemon.ports import free_port, free_port_block

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


class Stack:
    """supervisord + redis + consumers + subscriber + web + watchdog, from the shipped conf."""

    def __init__(self, handler: str = "handlers_for_tests:record", **env: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="taskd-stack-"))
        self.redis_port = free_port()
        self.web_port = free_port()
        self.metrics_prefix = free_port_block(10)
        self.subscriber_metrics = free_port()
        self.watchdog_metrics = free_port()
        self.record = self.root / "record.log"
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
        self.env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
                "TEST_HANDLER_RECORD": str(self.record),
                **env,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def metrics_port(self, process_num: int) -> int:
        return self.metrics_prefix * 100 + process_num

    def start(self, programs: tuple[str, ...] = ("redis", "consumer_00", "consumer_01")) -> Stack:
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
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def records(self) -> list[tuple[str, str, str]]:
        if not self.record.exists():
            return []
        return [tuple(line.split(" ", 2)) for line in self.record.read_text().splitlines()]  # type: ignore[misc]

    def done_bodies(self) -> list[str]:
        return [body for _, phase, body in self.records() if phase == "done"]

    def log(self, name: str) -> str:
        path = self.root / "var" / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # anything a broken run left behind (children of a killed supervisord)
        subprocess.run(["pkill", "-9", "-f", str(self.root)], check=False)
        time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
