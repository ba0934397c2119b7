"""The stack a soak runs against, and its own one (OwnedStack): Redis, the proxy, supervisord.

A running stack (--attach) is tools/soak/attached.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.harness import (
    RedisServer,
    RedisStartError,
    end_process,
    free_port,
    pids_mentioning,
    poll_until,
    spawn,
)
from tools.soak.processes import (
    ProxyControl,
    ProxyProcess,
    ancestors,
    port_block,
    supervisor_rpc,
)
from tools.soak.settings import (
    KINDS,
    MAX_SOCKET_PATH,
    ROOT,
    StackError,
    Timings,
)
from tools.soak.supervisord_conf import build_supervisord_conf, edit_section, venv_bin


class Stack:
    """What a soak run needs from a stack, owned or attached."""

    serverurl: str
    consumers: list[str]
    records_dir: Path
    redis_url: str  # direct, for the producer and the checks (never through the proxy)
    proxy: ProxyControl | None = None
    capabilities: frozenset[str] = frozenset()
    missing: dict[str, str]

    def rpc(self) -> Any:
        return supervisor_rpc(self.serverurl)

    def infos(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.rpc().getAllProcessInfo()}

    def pid_of(self, name: str) -> int | None:
        info = self.infos().get(name)
        if not info or info.get("statename") != "RUNNING":
            return None
        return int(info["pid"]) or None

    def start(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def redis_kill_restart(self) -> float:
        raise NotImplementedError

    def redis_signal(self, sig: int) -> None:
        raise NotImplementedError

    def redis_shut_down(self) -> None:
        """Stop Redis for a long outage (clean shutdown: the AOF keeps every write)."""
        raise NotImplementedError

    def redis_start(self) -> float:
        """Start Redis again after a long outage; returns when it answers PING."""
        raise NotImplementedError

    def consumer_metrics(self) -> dict[str, str]:
        """Consumer name -> its /metrics URL (empty when not known)."""
        return {}

    def extra_pids(self) -> dict[str, int]:
        return {}

    def log_paths(self) -> dict[str, list[Path]]:
        raise NotImplementedError

    def finish_logs(self) -> None:
        """Make sure the run folder holds the logs (copies them when attached)."""

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop what the soak started; waits are cut short once `hurry()` (a second signal)."""
        raise NotImplementedError


def wait_ready(
    stack: Stack, queue: str, channel: str, timeout: float, stop: threading.Event | None = None
) -> None:
    """Every consumer RUNNING with a live heartbeat in Redis, the subscriber subscribed."""
    import redis

    from daemon.keys import QueueKeys

    client: Any = redis.Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=2)
    qk = QueueKeys(queue)

    def ready() -> bool:
        infos = stack.infos()
        names = [*stack.consumers, *(n for n in ("subscriber", "watchdog") if n in infos)]
        if any(infos.get(n, {}).get("statename") != "RUNNING" for n in names):
            return False
        workers = [w.decode() for w in client.zrange(qk.workers, 0, -1)]
        alive = [w for w in workers if client.exists(qk.alive(w))]
        if not all(any(w.endswith(f":{c}") for w in alive) for c in stack.consumers):
            return False
        if "subscriber" in infos:
            numsub = client.pubsub_numsub(channel)
            return bool(numsub and numsub[0][1] >= 1)
        return True

    try:
        if not poll_until(lambda: (stop is not None and stop.is_set()) or ready(), timeout, 0.25):
            states = {}
            with contextlib.suppress(Exception):
                states = {n: i.get("statename") for n, i in stack.infos().items()}
            raise StackError(
                f"stack not ready within {timeout:g}s (every consumer RUNNING with a live "
                f"heartbeat, subscriber subscribed); states: {states}; see the logs in var/log"
            )
    finally:
        client.close()


def redis_config_allowed(url: str) -> bool:
    """Whether this Redis lets us read (and so, presumably, set) maxmemory."""
    import redis

    client: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.config_get("maxmemory"))
    except redis.RedisError:
        return False
    finally:
        client.close()


class OwnedStack(Stack):
    """redis-server + chaos proxy + supervisord (from conf/supervisord.conf) in the run folder."""

    def __init__(
        self,
        run_dir: Path,
        consumers: int,
        handler: str,
        timings: Timings,
        consumer_args: tuple[str, ...] = (),
    ) -> None:
        self.run_dir = run_dir
        self.consumer_args = consumer_args
        self.timings = timings
        self.handler = handler
        self.consumers = [f"consumer_{n:02d}" for n in range(consumers)]
        self.records_dir = run_dir / "records"
        self.log_dir = run_dir / "var" / "log"
        self.redis = RedisServer(
            run_dir / "var" / "redis", aof=True, log=self.log_dir / "redis.log"
        )
        self.redis_url = self.redis.url
        self.proxy_proc: ProxyProcess | None = None
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.sock = run_dir / "var" / "run" / "supervisor.sock"
        self.sock_dir: Path | None = None
        if len(str(self.sock)) > MAX_SOCKET_PATH:  # AF_UNIX paths are short (108 bytes)
            import tempfile

            self.sock_dir = Path(tempfile.mkdtemp(prefix="taskd-soak-"))
            self.sock = self.sock_dir / "supervisor.sock"
        self.serverurl = f"unix://{self.sock}"
        self.conf = run_dir / "conf" / "supervisord.conf"
        self.capabilities = frozenset(KINDS)
        self.missing = {}
        self.metrics_prefix: int | None = None

    def start(self, timeout: float = 60.0) -> None:
        for sub in ("conf", "var/run", "var/log", "var/redis", "records"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        bin_dir = venv_bin()
        link = self.run_dir / ".venv"
        if not link.exists():
            link.symlink_to(bin_dir.parent)
        for tool in ("supervisord", "taskd"):
            if not (bin_dir / tool).exists():
                raise StackError(f"{bin_dir / tool} not found: run `make setup` first")
        self.redis_start()
        self.proxy_proc = ProxyProcess(self.redis.port, self.log_dir / "chaos_proxy.log")
        self.proxy_proc.start()
        self.proxy = self.proxy_proc.control
        self.metrics_prefix = port_block(len(self.consumers))
        text = build_supervisord_conf(
            (ROOT / "conf" / "supervisord.conf").read_text(),
            proxy_url=self.proxy_proc.url,
            redis_port=self.redis.port,
            metrics_prefix=self.metrics_prefix,
            subscriber_metrics=free_port(),
            watchdog_metrics=free_port(),
            web_port=free_port(),
            handler=self.handler,
            consumer_args=self.consumer_args,
            consumers=len(self.consumers),
            grace=self.timings.watchdog_grace,
        )
        if self.sock_dir is not None:
            text = edit_section(
                text, "unix_http_server", [(r"^file=.*$", f"file={self.sock}", "file")]
            )
            text = edit_section(
                text, "supervisorctl", [(r"^serverurl=.*$", self.serverurl, "serverurl")]
            )
        self.conf.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        env.update(self.timings.env())
        env["SOAK_RECORDS_DIR"] = str(self.records_dir)
        self.supervisord = spawn(
            [str(bin_dir / "supervisord"), "-n", "-c", str(self.conf)],
            self.log_dir / "supervisord.stdout.log",
            env=env,
            cwd=self.run_dir,
        )
        sock = self.sock
        if not poll_until(lambda: sock.exists() and self.rpc().getState(), 20, 0.1):
            raise StackError(f"supervisord did not start; see {self.log_dir}")

    def redis_kill_restart(self) -> float:
        self.redis.kill9()
        return self.redis_start()

    def redis_signal(self, sig: int) -> None:
        self.redis.send(sig)

    def redis_shut_down(self) -> None:
        self.redis.stop(15.0)

    def redis_start(self) -> float:
        """Start Redis (again: from its AOF); when it answered. StackError if it does not."""
        try:
            return self.redis.start(timeout=30.0).started_at
        except RedisStartError as exc:
            raise StackError(str(exc)) from None

    def consumer_metrics(self) -> dict[str, str]:
        if self.metrics_prefix is None:
            return {}
        return {
            name: f"http://127.0.0.1:{self.metrics_prefix * 100 + n}/metrics"
            for n, name in enumerate(self.consumers)
        }

    def extra_pids(self) -> dict[str, int]:
        pids = {}
        if self.redis.pid:
            pids["redis-server"] = self.redis.pid
        if self.proxy_proc and self.proxy_proc.proc and self.proxy_proc.proc.poll() is None:
            pids["chaos-proxy"] = self.proxy_proc.proc.pid
        if self.supervisord and self.supervisord.poll() is None:
            pids["supervisord"] = self.supervisord.pid
        return pids

    def log_paths(self) -> dict[str, list[Path]]:
        logs = {p.name.split(".log")[0]: [p] for p in sorted(self.log_dir.glob("*.log"))}
        for name in list(logs):
            logs[name] += sorted(self.log_dir.glob(f"{name}.log.*"))
        return logs

    def teardown(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """supervisord (consumers drain), then the proxy, then Redis; SIGKILL what lingers."""
        child_pids: list[int] = []
        with contextlib.suppress(Exception):
            child_pids = [int(i["pid"]) for i in self.infos().values() if i.get("pid")]
        for pid in child_pids:  # a consumer left frozen would hold the shutdown
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        end_process(self.supervisord, 60.0, "supervisord", hurry)
        if self.proxy_proc:
            self.proxy_proc.stop(hurry)
        self.redis.stop(15.0, hurry)
        # children of a supervisord that had to be killed: found by the run folder in their
        # command line (unique to this run), never by a broad name
        for pid in set(pids_mentioning(str(self.run_dir))) - ancestors():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
