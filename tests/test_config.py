"""Settings: layering, validation, and the one-line exit-78 errors a user sees."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from daemon import config, redis_url
from daemon.config import ConfigError


def test_defaults_match_the_design() -> None:
    s = config.load({}, env={})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.queues == ("task:prodcons:queue",)
    assert s.channels == ("task:pubsub:channel",)
    assert s.block_timeout == 5.0
    assert s.socket_timeout == 10.0  # block timeout + margin
    assert s.heartbeat_ttl == 15.0  # 3 x block timeout
    assert s.max_attempts == 5
    # <host>:<machine tag>:<pid> (the tag: tests/test_worker_id.py)
    assert re.fullmatch(
        rf"{re.escape(socket.gethostname())}:[0-9a-f]{{8}}:{os.getpid()}", s.worker_id
    )


def test_layers_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "taskd.toml"
    cfg.write_text(
        'block_timeout = 2\nmax_attempts = 7\nqueues = ["a", "b"]\nhandler = "m:f"\n'
        "task_timeout = 100\n"
    )
    env = {"TASKD_MAX_ATTEMPTS": "8", "TASKD_TASK_TIMEOUT": "200"}
    s = config.load({"task_timeout": "300"}, env=env, config_path=str(cfg))
    assert s.block_timeout == 2.0  # file beats default
    assert s.queues == ("a", "b")
    assert s.max_attempts == 8  # env beats file
    assert s.task_timeout == 300.0  # flag beats env


def test_worker_id_is_stable_under_supervisord() -> None:
    s = config.load({}, env={"SUPERVISOR_PROCESS_NAME": "consumer_01"})
    assert re.fullmatch(
        rf"{re.escape(socket.gethostname())}:[0-9a-f]{{8}}:consumer_01", s.worker_id
    )


def test_env_lists_are_comma_separated() -> None:
    assert config.load({}, env={"TASKD_QUEUES": "x, y"}).queues == ("x", "y")


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"block_timeout": "0"}, {}, "--block-timeout='0': expected seconds > 0"),
        ({"block_timeout": "-1"}, {}, "expected seconds > 0"),
        ({}, {"TASKD_BLOCK_TIMEOUT": "abc"}, "TASKD_BLOCK_TIMEOUT='abc'"),
        ({"max_attempts": "0"}, {}, "--max-attempts='0'"),
        ({"socket_timeout": "5"}, {}, "--socket-timeout=5: expected more than the block timeout"),
        ({"stall_timeout": "8"}, {}, "--stall-timeout=8: expected more than the socket timeout"),
        ({"redis_url": "http://x"}, {}, "unknown scheme 'http'"),
        ({"redis_url": "localhost:6379"}, {}, "is not a URL"),
        ({"redis_url": "redis://h:99999/0"}, {}, "port 99999 is out of range"),
        ({"redis_url": "redis://h:6379/x"}, {}, "database 'x' is not a number"),
        ({"handler": "nocolon"}, {}, "--handler='nocolon': expected module:function"),
        ({"log_level": "loud"}, {}, "--log-level='loud'"),
    ],
)
def test_bad_values_raise_one_line_naming_the_value(
    flags: dict[str, str], env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(flags, env=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml.*file not found"):
        config.load({}, env={}, config_path=str(missing))
    bad = tmp_path / "bad.toml"
    bad.write_text("block_timeout = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, env={}, config_path=str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("blok_timeout = 3")
    with pytest.raises(ConfigError, match="unknown setting 'blok_timeout'"):
        config.load({}, env={}, config_path=str(unknown))


def test_password_never_appears_in_url_errors() -> None:
    with pytest.raises(ConfigError) as info:
        config.load({"redis_url": "redis://user:s3cret@h:bad/0"}, env={})
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("url", "hosts", "db", "extra"),
    [
        ("redis://127.0.0.1:6380/2", (("127.0.0.1", 6380),), 2, {}),
        ("redis://h", (("h", 6379),), 0, {}),
        ("rediss://u:p@h:6390/1", (("h", 6390),), 1, {"username": "u", "password": "p"}),
        ("unix:///tmp/r.sock?db=3", (), 3, {"path": "/tmp/r.sock"}),
        (
            "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/4",
            (("s1", 26379), ("s2", 26380)),
            4,
            {"master_name": "mymaster", "password": "pw"},
        ),
    ],
)
def test_redis_urls_parse_to_hosts_and_db(url: str, hosts: tuple, db: int, extra: dict) -> None:
    target = redis_url.parse(url)
    assert target.hosts == hosts
    assert target.db == db
    for key, value in extra.items():
        assert getattr(target, key) == value


def test_redact_hides_only_the_password() -> None:
    assert redis_url.redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redis_url.redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redis_url.redact("redis://h:1/0") == "redis://h:1/0"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("consume", "--handler", "daemon.handlers:log", "--redis-url", "foo://x"),
            "unknown scheme",
        ),
        (("consume", "--handler", "nosuchmodule:fn"), "cannot import module 'nosuchmodule'"),
        (("consume", "--handler", "daemon.handlers:nosuch"), "has no attribute 'nosuch'"),
        (("consume", "--handler", "daemon.handlers:log", "--block-timeout", "0"), "seconds > 0"),
        (("consume", "--handler", "daemon.handlers:log", "--task-timeout", "-3"), "seconds > 0"),
        (
            (
                "consume",
                "--handler",
                "daemon.handlers:log",
                "--block-timeout",
                "5",
                "--socket-timeout",
                "4",
            ),
            "expected more than the block timeout",
        ),
        (("consume",), "--handler is missing"),
        (("consume", "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (
            (
                "consume",
                "--handler",
                "daemon.handlers:log",
                "--redis-url",
                "redis://u:hunter2@h:x/0",
            ),
            "port 'x' is not a number",
        ),
    ],
)
def test_cli_config_errors_exit_78_with_one_line(args: tuple[str, ...], expected: str) -> None:
    result = _cli(*args)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_help_lists_every_verb_and_env_twins() -> None:
    result = _cli("consume", "--help")
    assert result.returncode == 0
    for flag in ("--queue", "--handler", "--block-timeout", "--task-timeout", "--max-attempts"):
        assert flag in result.stdout
    assert "TASKD_BLOCK_TIMEOUT" in result.stdout
