"""Operator mistakes in configuration stop startup with one line and exit 78, never a wrong run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TESTS
from daemon import config
from daemon.config import ConfigError


def _taskd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{TESTS}:{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=str(ROOT),
        timeout=30,
    )


def test_a_queue_given_twice_is_refused_because_its_tasks_would_run_twice() -> None:
    # closed port: the process must stop on the configuration, before any connection
    result = _taskd(
        "consume",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--handler",
        "daemon.handlers:noop",
        "--queue",
        "dq",
        "--queue",
        "dq",
    )
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "dq given more than once" in lines[0]


@pytest.mark.parametrize("name", ["TASKD_QUEUES", "TASKD_CHANNELS"])
def test_a_name_listed_twice_in_the_environment_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="a given more than once"):
        config.load({}, env={name: "a,b,a"})


def test_a_queue_listed_twice_in_the_config_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "taskd.toml"
    cfg.write_text('queues = ["x", "x"]\n')
    with pytest.raises(ConfigError, match="x given more than once"):
        config.load({}, env={}, config_path=str(cfg))


def test_misspelled_environment_variable_stops_startup_naming_the_closest_setting() -> None:
    result = _taskd(
        "consume",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--handler",
        "daemon.handlers:noop",
        env={"TASKD_QUEUE": "emails"},
    )
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TASKD_QUEUE" in lines[0] and "did you mean TASKD_QUEUES?" in lines[0]


@pytest.mark.parametrize("name", ["TASKD_BLOCK_TIMEOUTS", "TASKD_MAXATTEMPTS", "TASKD_XYZZY"])
def test_unknown_taskd_variables_are_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=f"environment variable {name}: not a taskd setting"):
        config.load({}, env={name: "1"})


def test_every_taskd_variable_the_project_itself_sets_is_known() -> None:
    """The shipped configs, shell scripts and docs name only variables taskd accepts.

    (Python sources are left out: a constant may start with TASKD_ without being a variable.)
    """
    found = subprocess.run(
        ["grep", "-rhoE", "--exclude=*.py", "TASKD_[A-Z0-9_]+"]
        + ["conf", "scripts", "docs", "README.md", "examples"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=False,
    ).stdout.split()
    assert found, "grep found no TASKD_ names at all"
    assert set(found) <= set(config.known_env_names())


def test_secrets_and_config_path_variables_are_accepted() -> None:
    s = config.load(
        {},
        env={"TASKD_REDIS_PASSWORD": "a", "TASKD_SENTINEL_PASSWORD": "b", "TASKD_WEB_TOKEN": "c"},
    )
    assert (s.redis_password, s.sentinel_password, s.web_token) == ("a", "b", "c")


def test_sentinel_password_file_is_read_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "sentinel.pw"
    secret.write_text("s3cret\n")
    s = config.load({"sentinel_password_file": str(secret)}, env={})
    assert s.sentinel_password == "s3cret"
    secret.write_text("")
    with pytest.raises(ConfigError, match="--sentinel-password-file=.*the file is empty"):
        config.load({"sentinel_password_file": str(secret)}, env={})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["watchdog", "--metrics-port", "70000"], "expected a TCP port 1-65535"),
        (["dead", "list", "--limit", "0"], "expected a whole number 1-1000000"),
        (["enqueue", "--wait-replicas", "-1", "x"], "--wait-replicas='-1'"),
        (["consume", "--metrics-port", "70000", "--handler", "m:f"], "--metrics-port=70000"),
    ],
)
def test_numeric_flags_out_of_range_exit_78_with_one_line(args: list[str], expected: str) -> None:
    result = _taskd(*args, env={"TASKD_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize("second", ["q:dead", "q:delayed", "q:attempts", "q:processing:w1"])
def test_a_queue_named_after_another_queues_key_is_refused(second: str) -> None:
    with pytest.raises(ConfigError, match=f"--queue='{second}': that is a key of queue 'q'"):
        config.load({"queues": ["q", second]}, env={})


def test_queues_that_only_share_a_prefix_are_fine() -> None:
    assert config.load({"queues": ["orders", "orders:high"]}, env={}).queues == (
        "orders",
        "orders:high",
    )


def test_upper_bounds_hold_for_every_caller_of_config_load_not_only_the_cli() -> None:
    with pytest.raises(ConfigError, match="--keepalive-count=500 .*expected a whole number 1-127"):
        config.load({}, env={"TASKD_KEEPALIVE_COUNT": "500"})
    with pytest.raises(ConfigError, match="expected seconds up to 31536000"):
        config.load({"block_timeout": "1e12"}, env={})
