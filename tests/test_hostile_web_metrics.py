"""What a real `taskd web` exports is true for it, and the shipped alerts agree (promtool)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from web_harness import request_json, start_taskd_web
from yaml_free_alerts import alerts

from conftest import ROOT, DaemonFactory, RedisServer, wait_until

PROMTOOL = shutil.which("promtool") or "promtool"
ALERTS = ROOT / "conf" / "prometheus" / "alerts.yml"
# About the whole fleet (no consumer answers), not about the series of the process scraped.
FLEET_ALERTS = {"TaskdConsumersDown"}
INSTANCE = "127.0.0.1:8000"


def scrape(port: int) -> dict[str, float]:
    """{'name{labels}': value} of one /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {"job": "taskd-web", "instance": INSTANCE, **sample.labels}
            inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            samples[f"{sample.name}{{{inner}}}"] = sample.value
    return samples


def alerts_firing(samples: dict[str, float], tmp: Path) -> set[str]:
    """Alerts (not about the fleet) that fire after 10 minutes of exactly this scrape."""
    series = {**samples, f'up{{job="taskd-web",instance="{INSTANCE}"}}': 1.0}
    lines = [f"rule_files: [{json.dumps(str(ALERTS))}]", "evaluation_interval: 1m", "tests:"]
    lines += ["  - interval: 1m", "    input_series:"]
    for name, value in series.items():
        lines += [f"      - series: {json.dumps(name)}", f"        values: '{value!r}x15'"]
    lines.append("    alert_rule_test:")
    checked = sorted(set(alerts(ALERTS)) - FLEET_ALERTS)
    for alert in checked:
        lines += ["      - eval_time: 12m", f"        alertname: {alert}", "        exp_alerts: []"]
    test_file = tmp / "web_scrape_test.yml"
    test_file.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    if run.returncode == 0:
        return set()
    return {alert for alert in checked if f"alertname: {alert}" in run.stdout + run.stderr}


def start_web(taskd: DaemonFactory, redis_url: str) -> int:
    return start_taskd_web(taskd, redis_url)[1]


def post_task(port: int) -> int:
    doc = {"queue": "task:prodcons:queue", "body": "x"}
    return request_json(f"http://127.0.0.1:{port}/api/tasks", doc)[0]


def test_healthy_web_process_exports_only_true_series_and_fires_no_alert(
    taskd: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = start_web(taskd, redis_server.url)
    assert post_task(port) == 202
    samples = scrape(port)
    connected = [v for k, v in samples.items() if k.startswith("taskd_redis_connected{")]
    assert connected == [1.0]
    names = {key.partition("{")[0] for key in samples}
    # series of the consumer loops that the web process never sets: not exported at all
    for loop_only in (
        "taskd_last_progress_timestamp_seconds",
        "taskd_redis_reconnects_total",
        "taskd_redis_out_of_memory",
    ):
        assert loop_only not in names
    assert any(name.startswith("taskd_web_requests") for name in names)
    assert alerts_firing(samples, tmp_path) == set()


def test_idle_web_process_reports_redis_down_when_it_is(
    taskd: DaemonFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = start_web(taskd, redis_server.url)
    fresh = scrape(port)  # no request yet: the scrape itself asks Redis
    assert [v for k, v in fresh.items() if k.startswith("taskd_redis_connected{")] == [1.0]
    redis_server.stop()

    def scrape_saying_down() -> dict[str, float] | None:
        samples = scrape(port)
        said = [v for k, v in samples.items() if k.startswith("taskd_redis_connected{")]
        return samples if said == [0.0] else None

    down = wait_until(scrape_saying_down, 20, "taskd_redis_connected 0 while Redis is stopped")
    assert alerts_firing(down, tmp_path) == {"TaskdRedisDisconnected"}
