"""The web producer's gunicorn arbiter speaks systemd's notify protocol (daemon/web_systemd.py).

A real gunicorn serving the real app, started the way `taskd web` starts it but through
`web_systemd.run`, against a real redis-server, with a notify socket the test opens.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from test_systemd_notify import NotifySocket, max_gap

from conftest import ROOT, RedisServer, stays_true, wait_until
from tools.harness.ports import free_port

SERVE = """
from daemon import config, web, web_server, web_systemd
settings = config.load({})
app = web.create_app(settings)
server = web_server.EmbeddedGunicorn(app, web_server.gunicorn_options(settings))
web_systemd.run(server, settings.web_bind)
"""


def test_web_arbiter_is_ready_pings_while_it_runs_and_says_when_it_stops(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    notify = NotifySocket()
    bind = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "TASKD_REDIS_URL": redis_server.url,
        "TASKD_WEB_BIND": bind,
        "TASKD_LOG_FORMAT": "json",
        **notify.env(WATCHDOG_USEC="3000000"),  # the arbiter wakes every second
    }
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        ready = notify.wait_for("READY", "1", 30)
        assert notify.with_field("READY")[0][1]["STATUS"] == f"web: serving on {bind}"
        with urllib.request.urlopen(f"http://{bind}/healthz", timeout=10) as answer:
            assert answer.status == 200
        wait_until(lambda: len(notify.pings(ready)) >= 4, 15, "pings from the arbiter")
        assert max_gap(notify.pings(ready)) < 1.5  # half of WatchdogSec=3

        proc.send_signal(signal.SIGSTOP)  # a frozen arbiter: silence
        try:
            frozen = time.monotonic() + 0.3
            stays_true(lambda: notify.pings(frozen) == [], 3.0, "silence of a frozen arbiter")
            assert notify.pings(frozen) == []
        finally:
            proc.send_signal(signal.SIGCONT)

        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", 10)
        assert proc.wait(45) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        notify.close()
