"""Every process kind of the real supervisord stack exports series that fire no shipped alert
while the stack is healthy: each /metrics page is scraped and the alert rules of
conf/prometheus/alerts.yml are evaluated over it by promtool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from yaml_free_alerts import alerts

from conftest import ROOT, Stack, wait_until

PROMTOOL = shutil.which("promtool") or "promtool"
ALERTS = ROOT / "conf" / "prometheus" / "alerts.yml"
Q = "task:prodcons:queue"
MINUTES = 40  # longer than every `for:` and range of the rules


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(TASKD_BLOCK_TIMEOUT="1", TASKD_SOCKET_TIMEOUT="2", TASKD_STALL_TIMEOUT="10")
    try:
        s.start(("redis", "consumer_00", "consumer_01", "subscriber", "web", "watchdog"))
        yield s
    finally:
        s.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(job: str, port: int) -> tuple[float, dict[str, float]]:
    """(unix time of the scrape, {'name{labels}': value}) with Prometheus's target labels."""
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, f"{job} :{port}: {status}"
    at = time.time()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {"job": job, "instance": f"127.0.0.1:{port}", **sample.labels}
            inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            samples[f"{sample.name}{{{inner}}}"] = sample.value
    return at, samples


def _values(name: str, value: float, at: float) -> str:
    """A promtool series: a timestamp gauge keeps its age (it moves with time), others stay."""
    if name.partition("{")[0].endswith("_timestamp_seconds"):
        return f"{value - at!r}+60x{MINUTES}"  # promtool's clock starts at 0
    return f"{value!r}x{MINUTES}"


def _alerts_firing(series: dict[str, str], tmp: Path) -> dict[str, str]:
    """{alert: promtool's report} for every shipped alert that fires over `series`."""
    lines = [f"rule_files: [{json.dumps(str(ALERTS))}]", "evaluation_interval: 1m", "tests:"]
    lines += ["  - interval: 1m", "    input_series:"]
    for name, values in series.items():
        lines += [f"      - series: {json.dumps(name)}", f"        values: '{values}'"]
    lines.append("    alert_rule_test:")
    names = sorted(alerts(ALERTS))
    for alert in names:
        lines += [
            f"      - eval_time: {MINUTES - 2}m",
            f"        alertname: {alert}",
            "        exp_alerts: []",
        ]
    test_file = tmp / "stack_scrape_test.yml"
    test_file.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    report = run.stdout + run.stderr
    if run.returncode == 0:
        return {}
    fired = {a: report for a in names if f"alertname: {a}" in report}
    assert fired, report  # promtool failed for another reason: show it
    return fired


def _connected(samples: dict[str, float]) -> bool:
    said = [v for k, v in samples.items() if k.startswith("taskd_redis_connected{")]
    return said in ([], [1.0])


def test_a_healthy_stack_scraped_process_by_process_fires_no_alert(
    stack: Stack, tmp_path: Path
) -> None:
    client = redis.Redis(port=stack.redis_port, socket_timeout=5, socket_connect_timeout=5)
    client.lpush(Q, *(f"t{i}" for i in range(10)))
    wait_until(lambda: len(stack.done_bodies()) == 10, 30, "the tasks done by the stack")
    targets = {
        "taskd-consumer": [stack.metrics_port(0), stack.metrics_port(1)],
        "taskd-subscriber": [stack.subscriber_metrics],
        "taskd-web": [stack.web_port],
        "taskd-watchdog": [stack.watchdog_metrics],
    }
    series: dict[str, str] = {}
    for job, ports in targets.items():
        for port in ports:
            at, samples = wait_until(
                lambda j=job, p=port: (s := _scrape(j, p)) and _connected(s[1]) and s,
                30,
                f"{job} :{port} scraped, connected to Redis",
            )
            # (the watchdog's only series, restarts per process, has no child before one)
            series.update({k: _values(k, v, at) for k, v in samples.items()})
            series[f'up{{instance="127.0.0.1:{port}",job="{job}"}}'] = f"1x{MINUTES}"
    for port in (stack.metrics_port(0), stack.metrics_port(1), stack.subscriber_metrics):
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200, port
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, port
    firing = _alerts_firing(series, tmp_path)
    assert firing == {}, "\n".join(firing.values())
    # the harness does see an alert that fires: one target down
    down = dict(series)
    down[f'up{{instance="127.0.0.1:{stack.web_port}",job="taskd-web"}}'] = f"0x{MINUTES}"
    assert set(_alerts_firing(down, tmp_path)) == {"TaskdTargetDown"}
