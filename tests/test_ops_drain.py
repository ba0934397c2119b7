"""Drain time: the recording rules on a real Prometheus scraping real consumers.

alerts_test.yml checks the arithmetic with promtool on hand-written series; this checks that the
rules meet the metric names and labels the consumers really export: a worked queue gets a drain
time, then 0 once empty; a queue whose only consumer hangs has pending tasks and no drain time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, DaemonFactory, RedisServer, free_port, wait_until

PROM = ROOT / "conf" / "prometheus"
PROMETHEUS = shutil.which("prometheus") or "prometheus"
PROMTOOL = shutil.which("promtool") or "promtool"


class Prometheus:
    """A real Prometheus with recording.yml, scraping the given ports every second."""

    def __init__(self, workdir: Path, targets: list[int]) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        scrape = ", ".join(f'"127.0.0.1:{p}"' for p in targets)
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}\n"
            f"rule_files: [{json.dumps(str(PROM / 'recording.yml'))}]\n"
            "scrape_configs:\n"
            f"  - job_name: taskd-consumer\n    static_configs: [{{targets: [{scrape}]}}]\n"
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._get("/-/ready") is not None, 30, "Prometheus ready")

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return bytes(r.read())
        except OSError:
            return None

    def query(self, expr: str) -> dict[str, float]:
        """{queue: value} of an instant query."""
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body is not None, "Prometheus did not answer"
        result = json.loads(body)["data"]["result"]
        return {r["metric"].get("queue", ""): float(r["value"][1]) for r in result}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def test_recording_rules_are_valid_loaded_and_each_has_a_promtool_case() -> None:
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(PROM / "recording.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    records = re.findall(r"- record: (\S+)", (PROM / "recording.yml").read_text())
    assert "taskd:queue_drain_seconds" in records
    assert "recording.yml" in (PROM / "prometheus.yml").read_text()
    tests = (PROM / "alerts_test.yml").read_text()
    assert "  - recording.yml" in tests
    for name in records:
        assert f"expr: {name}\n" in tests, f"{name} has no promql_expr_test"
    panels = json.loads((ROOT / "conf" / "grafana" / "taskd.json").read_text())["panels"]
    assert any(t["expr"] == "taskd:queue_drain_seconds" for p in panels for t in p["targets"])
    assert "## how long until a queue drains" in (ROOT / "docs" / "runbook.md").read_text().lower()


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "prometheus"
    path.mkdir()
    yield path


def test_drain_time_of_real_consumers_on_a_real_prometheus(
    redis_server: RedisServer, taskd: DaemonFactory, prometheus_dir: Path
) -> None:
    client = redis_server.client()
    worked, hung = free_port(), free_port()
    client.lpush("stuck", "hang:first")
    common = ("--handler", "handlers_for_tests:record", "--stall-timeout", "600")
    taskd.consume(redis_server.url, "--queue", "jobs", "--metrics-port", str(worked), *common)
    taskd.consume(
        redis_server.url,
        "--queue",
        "stuck",
        "--metrics-port",
        str(hung),
        "--task-timeout",
        "600",
        *common,
    )
    prometheus = Prometheus(prometheus_dir, [worked, hung])

    def rules() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        return (
            prometheus.query("taskd:queue_drain_seconds"),
            prometheus.query("taskd:queue_pending:max"),
            prometheus.query("taskd:queue_acked:rate5m"),
        )

    try:
        wait_until(lambda: client.llen("stuck") == 0, 10, "the hanging task claimed")
        # both consumers scraped (an acked rate needs two scrapes) before the load starts
        wait_until(lambda: set(rules()[2]) == {"jobs", "stuck"}, 30, "both queues' rates")
        client.lpush("stuck", "a", "b", "c")  # waits behind the hanging handler
        client.lpush("jobs", *[f"slow:0.02:t{i}" for i in range(400)])
        drain, pending, rate = wait_until(
            lambda: (
                (now := rules())[0].get("jobs", 0) > 0
                and now[1].get("stuck") == 3
                and now[2].get("stuck") == 0
                and now
            ),
            30,
            "a drain time for the worked queue while the other one is stuck",
        )
        assert drain["jobs"] > 0 and rate["jobs"] > 0, (drain, rate)
        assert "stuck" not in drain, drain  # pending, nothing acked: no value, not +Inf
        wait_until(lambda: client.llen("jobs") == 0, 60, "the worked queue empty")
        wait_until(
            lambda: prometheus.query("taskd:queue_drain_seconds").get("jobs") == 0,
            30,
            "drain time 0 once the queue is empty",
        )
        assert "stuck" not in prometheus.query("taskd:queue_drain_seconds")
    finally:
        prometheus.stop()
