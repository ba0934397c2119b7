"""The runbook does not lie: every command in its `sh` blocks runs, in order, on a real stack."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT, Stack, wait_until


def runbook_commands() -> list[str]:
    text = (ROOT / "docs" / "runbook.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_runbook_command_runs_against_a_real_stack() -> None:
    commands = runbook_commands()
    assert len(commands) >= 15
    stack = Stack(TASKD_BLOCK_TIMEOUT="1", TASKD_BACKOFF_CAP="0.5")
    ports = {
        "16379": stack.redis_port,
        "18600": stack.metrics_port(0),
        "18601": stack.metrics_port(1),
        "18650": stack.subscriber_metrics,
        "18690": stack.watchdog_metrics,
        "8000": stack.web_port,
    }
    try:
        stack.start()
        env = dict(stack.env)
        wait_until(lambda: stack.state("watchdog") == "RUNNING", 15, "the whole stack")
        stack.ctl("start", "all")
        for command in commands:
            for port, actual in ports.items():
                command = re.sub(rf"(?<![0-9]){port}(?![0-9])", str(actual), command)
            if command.startswith("export "):
                name, _, value = command[len("export ") :].partition("=")
                env[name] = value
                continue
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                cwd=stack.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )
            ok = result.returncode == 0 or (command.startswith("grep") and result.returncode == 1)
            assert ok, f"{command!r} failed ({result.returncode}): {result.stdout}{result.stderr}"
    finally:
        stack.stop()
