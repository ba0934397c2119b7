"""The web producer under the user's own gunicorn: `gunicorn 'daemon.web:app_from_env()'`.

Every test starts the real `.venv/bin/gunicorn` on a free loopback port against a real
redis-server, with settings from TASKD_* only, as an operator would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_harness import request_json

from conftest import ROOT, RedisServer, free_port, wait_until
from daemon.keys import DEFAULT_QUEUE, QueueKeys
from daemon.reliable import TOKEN_CHARS
from tools.harness.processes import end_process

Q = DEFAULT_QUEUE
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
FACTORY = "daemon.web:app_from_env()"
BOOT_DEADLINE = 20.0


def gunicorn_env(**extra: str) -> dict[str, str]:
    """The test's environment without any TASKD_* of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env["PYTHONPATH"] = str(ROOT)
    env["TASKD_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


def gunicorn_args(port: int, app: str, *extra: str) -> list[str]:
    """The command line an operator would type (no control socket: tests run side by side)."""
    return [
        GUNICORN,
        "-b",
        f"127.0.0.1:{port}",
        "-k",
        "gthread",
        "--threads",
        "4",
        "--no-control-socket",
        "--graceful-timeout",
        "5",
        *extra,
        app,
    ]


class Gunicorn:
    """A real gunicorn serving `app`; stopped (SIGTERM, then SIGKILL) with deadlines."""

    def __init__(self, tmp: Path, app: str, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.out = tmp / f"gunicorn-{self.port}.out"
        self.err = tmp / f"gunicorn-{self.port}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                gunicorn_args(self.port, app, *extra), stdout=out, stderr=err, env=env, cwd=ROOT
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(
        self, path: str, doc: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of a GET, or of a JSON POST when `doc` is given."""
        return request_json(self.url(path), doc, headers, timeout=5)

    def wait_ready(self) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.err.read_text()}")
            return self.request("/healthz")[0] == 200

        wait_until(answers, BOOT_DEADLINE, f"gunicorn on port {self.port}")

    def stop(self) -> None:
        end_process(self.proc, 10.0, f"gunicorn on port {self.port}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(app, env, *gunicorn flags) -> a ready Gunicorn; all are stopped at the end."""
    started: list[Gunicorn] = []

    def start(app: str, env: dict[str, str], *extra: str) -> Gunicorn:
        server = Gunicorn(tmp_path, app, env, *extra)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("app", [FACTORY, "daemon.web:application"])
def test_gunicorn_serves_the_app_built_from_the_environment(
    serve: Any, redis_server: RedisServer, app: str
) -> None:
    server = serve(app, gunicorn_env(TASKD_REDIS_URL=redis_server.url))
    # Host is 127.0.0.1:<gunicorn's port>, not TASKD_WEB_BIND's default :8000: served.
    status, doc = server.request("/api/tasks", {"queue": Q, "body": "from gunicorn"})
    assert (status, doc) == (202, {"queue": Q, "depth": 1})
    assert redis_server.client().lrange(Q, 0, -1) == [b"from gunicorn"]
    assert server.request("/healthz") == (200, {"state": "ok"})
    assert server.request("/readyz") == (200, {"state": "ready", "redis": "connected"})
    status, doc = server.request("/api/tasks", {"queue": Q, "body": "later", "delay": "30s"})
    assert status == 202 and doc["delay"] == 30.0 and doc["delayed"] == 1
    members = redis_server.client().zrange(QueueKeys(Q).delayed, 0, -1)
    assert [m[TOKEN_CHARS:] for m in members] == [b"later"]


def test_gunicorn_factory_still_refuses_a_foreign_host(
    serve: Any, redis_server: RedisServer
) -> None:
    server = serve(FACTORY, gunicorn_env(TASKD_REDIS_URL=redis_server.url))
    status, doc = server.request(
        "/api/tasks", {"queue": Q, "body": "x"}, {"Host": f"rebound.example:{server.port}"}
    )
    assert status == 403 and "rebound.example" in doc["reason"]
    assert redis_server.client().llen(Q) == 0


def test_gunicorn_factory_reads_the_other_taskd_settings(
    serve: Any, redis_server: RedisServer
) -> None:
    env = gunicorn_env(
        TASKD_REDIS_URL=redis_server.url, TASKD_QUEUES="jobs,other", TASKD_WEB_TOKEN="s3cret"
    )
    server = serve(FACTORY, env)
    assert server.request("/api/tasks", {"queue": "jobs", "body": "x"})[0] == 401
    auth = {"Authorization": "Bearer s3cret"}
    status, doc = server.request("/api/tasks", {"queue": "jobs", "body": "x"}, auth)
    assert (status, doc) == (202, {"queue": "jobs", "depth": 1})
    assert redis_server.client().lrange("jobs", 0, -1) == [b"x"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TASKD_BLOCK_TIMEOUT", "abc", "TASKD_BLOCK_TIMEOUT='abc': expected seconds > 0"),
        ("TASKD_REDIS_URL", "http://nowhere", "http://nowhere"),
        ("TASKD_BLOK_TIMEOUT", "1", "TASKD_BLOK_TIMEOUT: not a taskd setting"),
    ],
)
@pytest.mark.parametrize("preload", [False, True])
def test_bad_configuration_stops_gunicorn_with_one_line(
    tmp_path: Path,
    redis_server: RedisServer,
    variable: str,
    value: str,
    expected: str,
    preload: bool,
) -> None:
    env = gunicorn_env(**{"TASKD_REDIS_URL": redis_server.url, variable: value})
    extra = ("--preload",) if preload else ()
    done = subprocess.run(
        gunicorn_args(free_port(), FACTORY, *extra),
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=BOOT_DEADLINE,  # a worker boot loop would run into this and fail the test
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode != 0, stderr
    ours = [line for line in stderr.splitlines() if "taskd web" in line]
    assert len(ours) == 1, stderr
    assert expected in ours[0] and ours[0].removeprefix("Error: ").startswith("taskd web"), stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("Booting worker") <= 1, stderr  # stopped, not restarted in a loop
