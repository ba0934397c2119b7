"""gunicorn in-process for `taskd web`: its settings, its logs as JSON lines, its exit status.

One worker process with threads: /metrics then shows the whole process's counts, as every
other taskd process does. Several workers would each serve their own counters at random and
break rate(); scale out with more `taskd web` processes, each scraped on its own bind.
"""

from __future__ import annotations

import math
import os
from typing import Any

import structlog
from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from daemon import exitcodes, web_systemd
from daemon.config import Settings

WORKERS = 1
THREADS = 8
WORKER_TIMEOUT = 30  # gunicorn kills a worker silent this long (far above the request deadline)

_log = structlog.get_logger("taskd.web")


class JsonLogger(glogging.Logger):
    """gunicorn's error and access logs through the process's structlog renderer (JSON lines).

    Access lines go to stdout like every other line of a taskd process.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
                log.removeHandler(handler)
            log.propagate = True


class EmbeddedGunicorn(BaseApplication):
    """gunicorn in-process, configured only from here (no argv, no gunicorn.conf.py)."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn settings of `taskd web`."""
    return {
        "bind": [settings.web_bind],
        "workers": WORKERS,
        "worker_class": "gthread",
        "threads": THREADS,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": max(1, math.ceil(settings.drain_timeout)),
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logger_class": JsonLogger,
        "proc_name": "taskd-web",
        # gunicorn >= 25 opens a control socket at one per-user path: two servers would collide.
        "control_socket_disable": True,
    }


def run(app: Flask, settings: Settings) -> int:
    """Serve `app` under gunicorn on settings.web_bind until SIGTERM/SIGINT; 0 on a clean stop.

    gunicorn refusing a setting is exit 78 (it said why on stderr).
    """
    arbiter_pid = os.getpid()
    _log.info("web.starting", bind=settings.web_bind, workers=WORKERS, threads=THREADS)
    try:
        server = EmbeddedGunicorn(app, gunicorn_options(settings))
    except SystemExit:  # gunicorn refused a setting and said why on stderr
        return exitcodes.CONFIG
    try:
        web_systemd.run(server, settings.web_bind)  # gunicorn's run(), telling systemd too
    except SystemExit as stop:  # gunicorn ends its arbiter and its workers with sys.exit
        code = stop.code
        status = code if isinstance(code, int) else (exitcodes.OK if code is None else 1)
    else:
        status = exitcodes.OK
    if os.getpid() == arbiter_pid:  # gunicorn's workers unwind through here too: stay quiet
        (_log.info if status == exitcodes.OK else _log.error)("web.stopped", exit_code=status)
    return status
