"""/healthz turns 503 when Redis answers but no work gets done, with real processes.

The condition: the consumer points at a read-only replica. Redis answers every command, but
every claim is refused with READONLY (a transient refusal: the consumer retries for ever,
as it must during a failover), so pending tasks are never claimed. Restarting the process
is what a supervisor can do about it (and what surfaces it), so liveness fails, naming the
reason, while /readyz says Redis refuses writes.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import DaemonFactory, RedisServer, free_port, wait_until

STALL = 6.0  # above the socket timeout (block timeout 0.5 + margin)


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_is_503_while_a_read_only_replica_refuses_every_claim(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    master = RedisServer(tmp_path / "master")
    master.workdir.mkdir()
    master.start()
    replica = RedisServer(tmp_path / "replica", None, "--replicaof", "127.0.0.1", str(master.port))
    replica.workdir.mkdir()
    replica.start()
    try:
        master.client().lpush("jobs", "a", "b", "c")
        wait_until(lambda: replica.client().llen("jobs") == 3, 10, "the tasks replicated")
        port = free_port()
        daemon = taskd.consume(
            replica.url,
            "--queue",
            "jobs",
            "--handler",
            "handlers_for_tests:record",
            "--metrics-port",
            str(port),
            "--stall-timeout",
            str(STALL),
            "--task-timeout",
            "30",
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{base}/healthz")[0] == 200, 10, "/healthz answers")
        status, body = wait_until(
            lambda: (h := _get(f"{base}/healthz"))[0] == 503 and h, STALL + 10, "/healthz 503"
        )
        assert body["state"] == "stalled" and "no task claimed or settled" in body["reason"]
        assert body["seconds_since_work"] > STALL
        ready, why = _get(f"{base}/readyz")
        assert ready == 503 and why["redis"] == "connected", why
        assert "read" in why["refusing"].lower(), why  # READONLY: a replica refuses writes
        assert replica.client().llen("jobs") == 3 and not taskd.records()
        daemon.signal(signal.SIGTERM)
        daemon.wait(15)
    finally:
        replica.stop()
        master.stop()
