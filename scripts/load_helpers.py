"""What scripts/load.sh needs Python for: siege's summary and the stack it was started against.

    load_helpers.py summary FILE   -> "successful failed" from siege's output
    load_helpers.py stack CONF     -> "web URL", "redis URL", "consumer URL" lines of the
                                      supervisord stack running CONF (RUNNING consumers only)

Errors are one line on stderr with exit 1, never a traceback: load.sh turns them into its own
message.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("successful_transactions", "failed_transactions")


class Unusable(Exception):
    """Input this script cannot use; the message is the one line the operator sees."""


def siege_summary(text: str) -> tuple[int, int]:
    """The first JSON object of siege's stdout that is its summary.

    siege prints other lines before it (on its very first run, "New configuration template
    added to ~/.siege"), so the output as a whole is not JSON: decode from each "{" instead.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            doc, _ = decoder.raw_decode(text, start)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and all(k in doc for k in SUMMARY_KEYS):
            try:
                return int(doc[SUMMARY_KEYS[0]]), int(doc[SUMMARY_KEYS[1]])
            except (TypeError, ValueError):
                break
        start = text.find("{", start + 1)
    shown = " ".join(text.split())[:200] or "(nothing)"
    raise Unusable(f"siege printed no JSON summary (json_output): {shown}")


def _option(command: str, name: str) -> str | None:
    """The value of `--name VALUE` (or `--name=VALUE`) in a program's command line."""
    found = re.search(rf"(?:^|\s){re.escape(name)}(?:=|\s+)(\S+)", command)
    return found.group(1) if found else None


def _running(socket_file: str) -> set[str]:
    """Names (group:name and name) of the processes supervisord reports RUNNING."""
    from xmlrpc.client import ServerProxy

    from supervisor.xmlrpc import SupervisorTransport

    socket.setdefaulttimeout(5)  # a wedged supervisord must not hang the load test
    transport = SupervisorTransport("", "", f"unix://{socket_file}")
    proxy = ServerProxy("http://127.0.0.1", transport)
    try:
        infos: list[dict[str, Any]] = list(proxy.supervisor.getAllProcessInfo())  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - any failure means: no stack to check
        raise Unusable(f"no supervisord answers on {socket_file} ({exc})") from None
    return {i["name"] for i in infos if i["statename"] == "RUNNING"}


def stack(conf: Path) -> list[str]:
    """The addresses of the stack a supervisord runs from `conf`, read as supervisord reads it.

    supervisord's own parser expands %(here)s and %(process_num)02d, so `--metrics-port
    186%(process_num)02d` becomes each process's real port, whatever numprocs says.
    """
    try:
        from supervisor.options import ServerOptions
    except ImportError:
        raise Unusable("the supervisor package is not importable here") from None
    options = ServerOptions()
    options.configfile = str(conf)
    try:
        options.process_config(do_usage=False)
    except (ValueError, OSError) as exc:
        raise Unusable(f"cannot read {conf}: {exc}") from None
    section = options.configroot.supervisord
    unix = [c for c in section.server_configs if c.get("family") == socket.AF_UNIX]
    if not unix:
        raise Unusable(f"{conf} has no [unix_http_server] to ask which programs run")
    running = _running(unix[0]["file"])
    lines = []
    redis_url = (section.environment or {}).get("TASKD_REDIS_URL")
    for group in options.process_group_configs:
        for process in group.process_configs:
            command: str = process.command
            words = command.split()
            if process.name not in running or not any(w.endswith("taskd") for w in words[:1]):
                continue
            env = process.environment or {}
            redis_url = redis_url or env.get("TASKD_REDIS_URL")
            port = _option(command, "--metrics-port")
            if words[1:2] == ["consume"] and port:
                lines.append(f"consumer http://127.0.0.1:{port}/metrics")
            bind = _option(command, "--bind")
            if words[1:2] == ["web"] and bind:
                host, _, web_port = bind.rpartition(":")
                host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
                lines.append(f"web http://{host}:{web_port}")
    if redis_url:
        lines.append(f"redis {redis_url}")
    return lines


def main(argv: list[str]) -> int:
    """Dispatch the two sub-commands; any unusable input is one line and exit 1."""
    if len(argv) != 2 or argv[0] not in ("summary", "stack"):
        print("usage: load_helpers.py summary FILE | stack CONF", file=sys.stderr)
        return 2
    try:
        if argv[0] == "summary":
            try:
                text = Path(argv[1]).read_text(errors="replace")
            except OSError as exc:
                raise Unusable(f"cannot read siege's output: {exc}") from None
            print(*siege_summary(text))
        else:
            print("\n".join(stack(Path(argv[1]))))
    except Unusable as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a surprise is still one line, not a traceback
        print(f"{argv[0]}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
