"""A running stack the soak attaches to (--attach): someone else's supervisord and Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tools.harness import poll_until
from tools.soak.processes import (
    ProxyControl,
)
from tools.soak.settings import (
    CONSUMER_KINDS,
    LONG_OUTAGE,
    OOM,
    PROXY_KINDS,
    REDIS_KINDS,
    TASK_KINDS,
    StackError,
)
from tools.soak.stack import Stack, redis_config_allowed


class AttachedStack(Stack):
    """A stack someone else runs (`--attach`): the soak produces, injects faults and watches.

    Expects: supervisord reachable through the [supervisorctl] serverurl of `--supervisor-conf`,
    a `consumer` group whose processes run `--handler tools.soak.handler:handle` with
    SOAK_RECORDS_DIR=<--records-dir> (and the soak timings, see docs/soak.md), `--redis-url`
    the Redis they consume. Proxy faults need `--proxy-control`; Redis faults need a
    [program:redis] in that supervisord (killed by pid, restarted by supervisord).
    """

    def __init__(
        self,
        conf: Path,
        redis_url: str,
        records_dir: Path,
        proxy_control: str | None,
        run_dir: Path,
    ) -> None:
        import configparser

        parser = configparser.RawConfigParser()
        try:
            parser.read_string(conf.read_text())
        except (OSError, configparser.Error) as exc:
            raise StackError(f"--supervisor-conf {conf}: cannot read ({exc})") from None
        here = str(conf.resolve().parent)
        url = parser.get("supervisorctl", "serverurl", fallback="")
        if not url and parser.has_option("unix_http_server", "file"):
            url = "unix://" + parser.get("unix_http_server", "file")
        if not url:
            raise StackError(f"--supervisor-conf {conf}: no [supervisorctl] serverurl")
        self.serverurl = url.replace("%(here)s", here)
        self.redis_url = redis_url
        self.records_dir = records_dir
        self.run_dir = run_dir
        self.log_dir = run_dir / "var" / "log"
        self.proxy = None
        if proxy_control:
            host, _, port = proxy_control.rpartition(":")
            self.proxy = ProxyControl(host or "127.0.0.1", int(port))
        self.consumers = []
        self.missing = {}
        self._logs: dict[str, list[Path]] = {}
        self._offsets: dict[Path, int] = {}
        self._copied: dict[str, list[Path]] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            infos = self.infos()
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot attach"
            raise StackError(f"cannot reach supervisord at {self.serverurl}: {exc}") from None
        self.consumers = sorted(n for n, i in infos.items() if i.get("group") == "consumer")
        if not self.consumers:
            raise StackError("the attached supervisord runs no [program:consumer] processes")
        caps = set(CONSUMER_KINDS | TASK_KINDS)
        if self.proxy is not None:
            try:
                self.proxy.state()
            except OSError as exc:
                raise StackError(f"--proxy-control: no chaos proxy answers ({exc})") from None
            caps |= PROXY_KINDS
        else:
            self.missing.update({k: "no --proxy-control given" for k in PROXY_KINDS})
        if infos.get("redis", {}).get("statename") == "RUNNING":
            caps |= REDIS_KINDS
        else:
            self.missing.update(
                {k: "the attached supervisord runs no [program:redis]" for k in REDIS_KINDS}
            )
        self.missing[LONG_OUTAGE] = (
            "needs the soak's own stack (its consumers run with a tiny reconnect backoff)"
        )
        if redis_config_allowed(self.redis_url):
            caps.add(OOM)
        else:
            self.missing[OOM] = "CONFIG GET/SET maxmemory is not allowed on --redis-url"
        self.capabilities = frozenset(caps)
        for name, info in infos.items():
            paths = [
                Path(p)
                for p in (info.get("stdout_logfile"), info.get("stderr_logfile"))
                if p and p != "/dev/null"
            ]
            self._logs[name] = paths
            for path in paths:
                with contextlib.suppress(OSError):
                    self._offsets[path] = path.stat().st_size
        self._main_log_start = len(self.rpc().readLog(0, 0))

    def redis_kill_restart(self) -> float:
        pid = self.pid_of("redis")
        if pid is None:
            raise RuntimeError("the attached redis is not RUNNING")
        os.kill(pid, signal.SIGKILL)
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)

        def back() -> bool:
            new = self.pid_of("redis")
            return new is not None and new != pid and bool(client.ping())

        try:
            if not poll_until(back, 60, 0.1):
                raise RuntimeError("supervisord did not bring redis back within 60s")
        finally:
            client.close()
        return time.time()

    def redis_signal(self, sig: int) -> None:
        pid = self.pid_of("redis")
        if pid is None:
            raise RuntimeError("the attached redis is not RUNNING")
        os.kill(pid, sig)

    def extra_pids(self) -> dict[str, int]:
        with contextlib.suppress(Exception):
            return {"supervisord": int(self.rpc().getPID())}
        return {}

    def log_paths(self) -> dict[str, list[Path]]:
        return self._copied if self._copied is not None else dict(self._logs)

    def finish_logs(self) -> None:
        """Copy what the logs gained during the run into the run folder."""
        copied: dict[str, list[Path]] = {}
        for name, paths in self._logs.items():
            for path in paths:
                dest = self.log_dir / path.name
                with contextlib.suppress(OSError), open(path, "rb") as src:
                    src.seek(self._offsets.get(path, 0))
                    dest.write_bytes(src.read())
                    copied.setdefault(name, []).append(dest)
        with contextlib.suppress(Exception):
            text = self.rpc().readLog(0, 0)[self._main_log_start :]
            (self.log_dir / "supervisord.log").write_text(text)
            copied["supervisord"] = [self.log_dir / "supervisord.log"]
        self._copied = copied

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Nothing to stop: the stack is someone else's (faults were undone by the run)."""
