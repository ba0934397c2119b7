"""conf/systemd/: the units pass `systemd-analyze verify`, and their command lines really run.

systemd is not PID 1 here, so the units are not started by systemd itself: each unit's
ExecStart (its specifiers expanded as systemd would, the install path pointed at this
checkout's virtualenv) is started with the unit's environment files and a notify socket,
against a real redis-server, and must report READY=1, then drain on SIGTERM.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_systemd_notify import NotifySocket

from conftest import ROOT, DaemonFactory, RedisServer, wait_until
from daemon import cli, config
from daemon.config import Settings
from daemon.worker_id import local_machine_tag
from tools.harness.ports import free_port

UNITS = ROOT / "conf" / "systemd"
INSTALLED = "/opt/taskd/.venv/bin/taskd"  # where the units expect taskd (README)
HERE = str(Path(sys.executable).parent / "taskd")
SERVICES = ("taskd-consumer@.service", "taskd-subscriber.service", "taskd-web.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"  # scripts/setup.sh


def unit(name: str) -> configparser.ConfigParser:
    """A unit file as sections of keys (repeated keys keep the last value; enough here)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def environment_files(name: str) -> list[str]:
    text = (UNITS / name).read_text()
    return [
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("EnvironmentFile=")
    ]


def seconds(value: str) -> float:
    assert value.endswith("s") and value[:-1].isdigit(), value
    return float(value[:-1])


def local_copies(tmp_path: Path) -> list[Path]:
    """The units with taskd's install path pointed at this checkout (verify checks it exists)."""
    out = tmp_path / "units"
    out.mkdir()
    for name in SERVICES:
        (out / name).write_text((UNITS / name).read_text().replace(INSTALLED, HERE))
    return [out / name for name in SERVICES]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Unknown keys, unparsable values and a missing executable are all reported (rc 0 or not)."""
    copies = local_copies(tmp_path)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # warnings ("Unknown key ...") go here


def test_units_hardening_keeps_exposure_low(tmp_path: Path) -> None:
    for copy in local_copies(tmp_path):
        done = subprocess.run(
            [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=25", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-400:]  # exposure <= 2.5 of 10


@pytest.mark.parametrize("name", SERVICES)
def test_units_restart_on_failure_but_not_on_bad_config_and_give_time_to_drain(name: str) -> None:
    """Type=notify, restarts but not on bad configuration, SIGTERM with time to drain."""
    service = unit(name)["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"].startswith(INSTALLED + " ")
    defaults = Settings()
    assert seconds(service["TimeoutStopSec"]) > defaults.drain_timeout + defaults.block_timeout
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert environment_files(name)[0] == "-/etc/taskd/taskd.env"
    assert seconds(service["WatchdogSec"]) >= 10
    if name != "taskd-web.service":  # the web serves (503) while Redis is down
        assert service["TimeoutStartSec"] == "infinity"  # Redis down: wait, do not fail


def expand(command: str, instance: str) -> list[str]:
    """ExecStart as systemd runs it: %H the host name, %i the instance."""
    argv = shlex.split(command.replace("%H", socket.gethostname()).replace("%i", instance))
    assert argv[0] == INSTALLED
    return argv[1:]


def consumer_argv(instance: str) -> list[str]:
    return expand(unit(SERVICES[0])["Service"]["ExecStart"], instance)


@pytest.mark.parametrize("instance", ["1", "4", "9"])
def test_consumer_instances_get_stable_ids_and_ports(instance: str) -> None:
    settings = cli._settings(cli.build_parser().parse_args(consumer_argv(instance)))
    # unique across hosts that share a host name: the machine tag between the two
    assert settings.worker_id == f"{socket.gethostname()}:{local_machine_tag()}:consumer-{instance}"
    assert settings.metrics_port == 18600 + int(instance)


def test_consumer_instance_past_nine_is_refused_as_bad_configuration(
    taskd: DaemonFactory,
) -> None:
    """1860<10> is no port: exit 78 and one line, which RestartPreventExitStatus keeps from
    becoming a restart loop."""
    done = taskd.run(*consumer_argv("10"), "--handler", "daemon.handlers:noop")
    assert done.returncode == 78
    assert b"--metrics-port" in done.stderr and len(done.stderr.splitlines()) == 1


def unit_env(name: str) -> dict[str, str]:
    """The unit's Environment= and EnvironmentFile= contents, the shipped examples standing
    in for /etc/taskd/, later files winning as in systemd."""
    env: dict[str, str] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, value = line.split("=", 1)[1].split("=", 1)
            env[key] = value
    for path in environment_files(name):
        example = UNITS / Path(path.lstrip("-")).name
        for line in example.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip()
    return env


@pytest.mark.parametrize("name", SERVICES)
def test_unit_command_line_runs_reports_ready_and_stops_cleanly(
    name: str, taskd: DaemonFactory, redis_server: RedisServer
) -> None:
    notify = NotifySocket()
    try:
        service = unit(name)["Service"]
        argv = expand(service["ExecStart"], "3")
        if "--metrics-port" in argv:  # a free port: the unit's own may be taken on this host
            argv[argv.index("--metrics-port") + 1] = str(free_port())
        env = {**unit_env(name), "TASKD_REDIS_URL": redis_server.url}
        if name == "taskd-web.service":
            env["TASKD_WEB_BIND"] = f"127.0.0.1:{free_port()}"
        base = {k: v for k, v in taskd.env().items() if not k.startswith("TASKD_")}
        daemon = taskd.start(*argv, env={**base, **env, **notify.env(WATCHDOG_USEC="2000000")})
        ready = notify.wait_for("READY", "1", 30)
        if name == "taskd-consumer@.service":
            workers = redis_server.client().zrange("task:prodcons:queue:workers", 0, -1)
            assert workers == [f"{socket.gethostname()}:{local_machine_tag()}:consumer-3".encode()]
        if name != "taskd-web.service":
            wait_until(lambda: notify.pings(ready), 10, "WATCHDOG=1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(int(seconds(service["TimeoutStopSec"]))) == 0
        if name != "taskd-web.service":
            assert notify.with_field("STOPPING", "1")
    finally:
        notify.close()


def test_environment_files_name_only_settings() -> None:
    """What the examples set is accepted (an unknown TASKD_ name would be exit 78)."""
    known = set(config.known_env_names())
    for name in SERVICES:
        assert set(unit_env(name)) <= known, name
