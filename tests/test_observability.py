"""What operators see: metrics checked by promtool, health endpoints, alert rules, JSON logs."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import yaml_free_alerts

from conftest import ROOT, DaemonFactory, RedisServer, free_port, wait_until

PROM = ROOT / "conf" / "prometheus"
PROMTOOL = shutil.which("promtool") or "promtool"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


def test_promtool_checks_config_rules_and_alert_unit_tests() -> None:
    for args in (
        ["check", "config", str(PROM / "prometheus.yml")],
        ["check", "rules", str(PROM / "alerts.yml")],
        ["test", "rules", str(PROM / "alerts_test.yml")],
    ):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_and_a_runbook_section_and_a_dashboard_panel() -> None:
    alerts = yaml_free_alerts.alerts(PROM / "alerts.yml")
    tested = (PROM / "alerts_test.yml").read_text()
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    dashboard = json.loads((ROOT / "conf" / "grafana" / "taskd.json").read_text())
    panel_exprs = [" ".join(t["expr"].split()) for p in dashboard["panels"] for t in p["targets"]]
    assert len(alerts) >= 8
    for name, expr in alerts.items():
        assert f"alertname: {name}" in tested, f"{name} has no promtool test"
        assert f"## {name.lower()}" in runbook, f"{name} has no runbook section"
        if name != "TaskdConsumersDown":  # absent() has no panel; "Targets up" shows it
            assert any(p in expr for p in panel_exprs), f"{name}: no panel uses its expression"


def test_metrics_of_a_real_consumer_pass_promtool_and_count_what_happened(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    port = free_port()
    client = redis_server.client()
    for i in range(100):
        client.lpush("jobs", f"t{i}")
    for i in range(3):
        client.lpush("jobs", f"fail:{i}")
    taskd.consume(
        redis_server.url,
        "--queue",
        "jobs",
        "--handler",
        "handlers_for_tests:record",
        "--max-attempts",
        "1",
        "--metrics-port",
        str(port),
    )
    wait_until(lambda: client.llen("jobs:dead") == 3 and len(taskd.done_bodies()) == 100, 20, "all")
    text = wait_until(
        lambda: (
            (t := _get(f"http://127.0.0.1:{port}/metrics")[1])
            and _sample(t, "taskd_tasks_acked_total", queue="jobs") == 100
            and t
        ),
        10,
        "acked counter at 100",
    )
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert _sample(text, "taskd_tasks_claimed_total", queue="jobs") == 103
    assert _sample(text, "taskd_tasks_failed_total", queue="jobs") == 3
    assert _sample(text, "taskd_tasks_dead_lettered_total", queue="jobs") == 3
    assert _sample(text, "taskd_tasks_retried_total", queue="jobs") == 0
    assert _sample(text, "taskd_task_duration_seconds_count", queue="jobs") == 103
    assert _sample(text, "taskd_queue_depth", queue="jobs", state="pending") == 0
    assert _sample(text, "taskd_queue_depth", queue="jobs", state="dead") == 3
    assert _sample(text, "taskd_queue_workers_alive", queue="jobs") == 1
    assert _sample(text, "taskd_redis_connected") == 1
    assert _sample(text, "taskd_tasks_in_progress", queue="jobs") == 0
    assert _sample(text, "taskd_build_info") == 1
    assert _sample(text, "process_start_time_seconds") is not None
    assert "worker=" not in text and "task=" not in text  # no high-cardinality labels


def test_readyz_follows_redis_and_healthz_reports_progress(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = RedisServer(tmp_path / "later")
    server.workdir.mkdir()
    port = free_port()
    daemon = taskd.consume(
        server.url,
        "--queue",
        "jobs",
        "--handler",
        "handlers_for_tests:record",
        "--metrics-port",
        str(port),
        "--backoff-cap",
        "0.5",
    )
    status, body = wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz"), 10, "/readyz")
    assert status == 503 and json.loads(body)["redis"] in ("down", "unknown")
    status, body = _get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["state"] == "ok" and health["seconds_since_progress"] < 5
    assert "task_age_seconds" in health
    server.start()
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 5, "ready")
        assert _sample(_get(f"http://127.0.0.1:{port}/metrics")[1], "taskd_redis_connected") == 1
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.wait(15)
        server.stop()


def test_healthz_is_503_with_the_reason_once_stalled() -> None:
    from daemon.config import load
    from daemon.liveness import Progress
    from daemon.probes import health

    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    settings = load({"stall_timeout": "60"}, env={})
    assert health(progress, settings)[0] == 200
    now[0] = 61.0
    status, body = health(progress, settings)
    assert status == 503 and body["state"] == "stalled" and "stall-timeout" in body["reason"]


REQUIRED = {"timestamp", "level", "event", "logger"}
TASK_KEYS = {"worker", "queue", "task", "attempt", "duration"}


def test_every_log_line_of_a_real_run_is_json_with_the_required_keys(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    client.lpush("jobs", "ok-1", "fail:x", "ok-2")
    daemon = taskd.consume(
        redis_server.url,
        "--queue",
        "jobs",
        "--handler",
        "handlers_for_tests:record",
        "--max-attempts",
        "2",
    )
    wait_until(lambda: client.llen("jobs:dead") == 1, 15, "the dead letter")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    raw = daemon.log_path.read_text().splitlines()
    assert len(raw) >= 8
    outcomes = []
    for line in raw:
        doc = json.loads(line)  # every line is one JSON object
        assert set(doc) >= REQUIRED, doc
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", doc["timestamp"])
        if doc["event"] in ("task.done", "task.failed", "task.dead_lettered"):
            assert set(doc) >= TASK_KEYS, doc
            outcomes.append(doc["event"])
    assert sorted(outcomes) == ["task.dead_lettered", "task.done", "task.done", "task.failed"]


def test_password_never_appears_in_any_output(tmp_path: Path, taskd: DaemonFactory) -> None:
    secret = "s3cr3t-Pa55"
    server = RedisServer(tmp_path / "auth", None, "--requirepass", secret)
    server.workdir.mkdir()
    server.start()
    try:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        port = free_port()
        outputs = []
        for args in (
            ("enqueue", "--redis-url", url, "--queue", "jobs", "a", "fail:b"),
            ("status", "--redis-url", url, "--queue", "jobs"),
            ("status", "--redis-url", url, "--queue", "jobs", "--json"),
        ):
            result = taskd.run(*args)
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout.decode() + result.stderr.decode())
        daemon = taskd.consume(
            url,
            "--queue",
            "jobs",
            "--handler",
            "handlers_for_tests:record",
            "--max-attempts",
            "1",
            "--metrics-port",
            str(port),
            "--log-level",
            "debug",
        )
        wait_until(lambda: len(taskd.done_bodies()) == 1, 15, "a task done")
        for path in ("/metrics", "/healthz", "/readyz"):
            outputs.append(_get(f"http://127.0.0.1:{port}{path}")[1])
        outputs.append(
            taskd.run("dead", "list", "--redis-url", url, "--queue", "jobs").stdout.decode()
        )
        wrong = taskd.run("status", "--redis-url", f"redis://:{secret}x@127.0.0.1:{server.port}/0")
        assert wrong.returncode == 78
        outputs.append(wrong.stdout.decode() + wrong.stderr.decode())
        daemon.signal(signal.SIGTERM)
        daemon.wait(15)
        outputs.append(daemon.log_path.read_text())
        everything = "\n".join(outputs)
        assert "consumer.started" in everything and "***" in everything
        assert secret not in everything
    finally:
        server.stop()
