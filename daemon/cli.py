"""The `taskd` command: one subcommand per verb, its flags generated from the declared settings.

Configuration errors end here with one line on stderr and exit code 78, never a traceback.
The verbs' commands are in daemon/commands.py; the settings in daemon/settings.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import redis

from daemon import __version__, commands, exitcodes
from daemon.config import DECLARED, MAX_SECONDS, ConfigError, Settings, env_name, flag_name
from daemon.settings_spec import Flag, Names

HELP_EPILOG = f"""\
Every flag has an environment twin: --block-timeout is TASKD_BLOCK_TIMEOUT, --queue is
TASKD_QUEUES (comma-separated). Precedence: defaults < --config FILE (TOML) < TASKD_* < flags.
Exit codes: {exitcodes.OK} clean stop, {exitcodes.STALLED} stall detector fired, \
{exitcodes.DRAIN_TIMEOUT} drain timeout, {exitcodes.CONFIG} bad configuration.
"""
_settings = commands.settings_from_args  # kept for callers of the old name


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line with exit code 78, like any config error."""

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.CONFIG, f"{self.prog}: error: {message} (see --help)\n")


MAX_DEAD_LIMIT = 1_000_000
MAX_RESTARTS = 10_000


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds > 0") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected seconds > 0, at most {MAX_SECONDS:.0f}"
        )
    return value


def _delay(text: str) -> float:
    """argparse type of --delay: a duration (500ms, 30s, 5m, 1h) or plain seconds, >= 0."""
    from daemon.producer import parse_delay

    try:
        return parse_delay(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a TCP port 1-65535, or 0 for none")
    return int(text)


def _whole(maximum: int) -> Callable[[str], int]:
    """argparse type: a whole number 1..maximum."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number 1-{maximum}")
        return int(text)

    return parse


def _help(name: str, verb: str, defaults: Settings) -> str:
    """A setting's help on `verb`, with its environment twin and its default."""
    row = DECLARED[name]
    if row.derive is not None:
        shown = f"{row.derived_from}, also for 0"
    else:
        default = getattr(defaults, name)
        shown = ", ".join(default) if isinstance(default, tuple) else str(default)
        shown = shown or "none"
    return f"{row.help_for(verb)} (env {env_name(name)}; default {shown})"


def add_settings(parser: argparse.ArgumentParser, verb: str) -> None:
    """--config, then a flag for every setting declared for `verb` (values parsed by config)."""
    parser.add_argument("--config", help="TOML file with settings (env TASKD_CONFIG)")
    defaults = Settings()
    for name, row in DECLARED.items():
        if verb not in row.verbs:
            continue
        flag, text = flag_name(name), _help(name, verb, defaults)
        if isinstance(row.kind, Names):
            parser.add_argument(flag, dest=name, action="append", help=text)
        elif isinstance(row.kind, Flag):
            parser.add_argument(flag, dest=name, action="store_const", const=True, help=text)
        else:
            metavar = row.metavar or name.upper().split("_")[-1]
            parser.add_argument(flag, dest=name, help=text, metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one subcommand per verb."""
    parser = _Parser(
        prog="taskd",
        description="A Redis task consumer that never hangs silently and never loses a task.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskd {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    consume = verbs.add_parser(
        "consume",
        help="consume tasks from one or more queues (the daemon)",
        description="Claim tasks with BLMOVE into a per-worker processing list, run the handler, "
        "ack after success; retry with backoff, dead-letter after --max-attempts.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(consume, "consume")
    consume.set_defaults(run=commands.cmd_consume)

    enqueue = verbs.add_parser(
        "enqueue",
        help="push tasks onto a queue",
        description="Push each BODY as one task; with '-' read one task per stdin line.",
    )
    add_settings(enqueue, "enqueue")
    enqueue.add_argument(
        "--delay",
        type=_delay,
        default=0.0,
        metavar="DURATION",
        help="run the tasks this much later: 500ms, 30s, 5m, 1h or plain seconds (they wait in "
        "the queue's delayed set, due on Redis's clock; default 0 = at once)",
    )
    enqueue.add_argument("bodies", nargs="+", metavar="BODY", help="task bodies, or - for stdin")
    enqueue.set_defaults(run=commands.cmd_enqueue)

    subscribe = verbs.add_parser(
        "subscribe",
        help="handle messages published on channels (pub/sub; at-most-once unless --durable)",
        description="Subscribe to channels and patterns with a PING deadline, reconnect and "
        "re-subscribe after any fault, and count the seconds spent unsubscribed.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(subscribe, "subscribe")
    subscribe.set_defaults(run=commands.cmd_subscribe)

    publish = verbs.add_parser("publish", help="publish messages on a channel")
    add_settings(publish, "publish")
    publish.add_argument("bodies", nargs="+", metavar="BODY", help="messages, or - for stdin")
    publish.set_defaults(run=commands.cmd_publish)

    status = verbs.add_parser(
        "status", help="show queue depths, processing lists, workers and dead letters"
    )
    add_settings(status, "status")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=commands.cmd_status)

    dead = verbs.add_parser("dead", help="list, requeue or purge dead letters")
    dead.add_argument("action", choices=("list", "requeue", "purge"))
    add_settings(dead, "dead")
    dead.add_argument(
        "--limit",
        type=_whole(MAX_DEAD_LIMIT),
        default=100,
        help=f"how many to list (default 100, at most {MAX_DEAD_LIMIT})",
    )
    dead.set_defaults(run=commands.cmd_dead)

    watchdog = verbs.add_parser(
        "watchdog",
        help="supervisord event listener: restart taskd processes whose progress file went stale",
        description="Run as [eventlistener:watchdog] with events=TICK_5. Speaks the event "
        "listener protocol on stdin/stdout and logs to stderr only.",
    )
    watchdog.add_argument(
        "--grace",
        type=_positive,
        default=5.0,
        help="seconds beyond a process's stall timeout before its stale progress file triggers a "
        "restart (default 5; TICK_5 adds up to 5 s more)",
    )
    watchdog.add_argument(
        "--group",
        action="append",
        help="supervisord group(s) to watch (default: every process with a progress file)",
    )
    watchdog.add_argument(
        "--heartbeat-dir",
        default="",
        help="folder of progress files named <process name>.json (default var/run)",
    )
    watchdog.add_argument(
        "--max-restarts",
        type=_whole(MAX_RESTARTS),
        default=3,
        help="restarts per process "
        "within --restart-window before the watchdog only reports (default 3)",
    )
    watchdog.add_argument(
        "--restart-window",
        type=_positive,
        default=600.0,
        help="seconds of the restart rate limit window (default 600)",
    )
    watchdog.add_argument(
        "--startup-timeout",
        type=_positive,
        default=120.0,
        help="seconds a process of a --group may run without ever writing a progress file "
        "before it is restarted (default 120)",
    )
    watchdog.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="port of the listener's own /metrics (taskd_watchdog_restarts_total; 0 = none)",
    )
    watchdog.set_defaults(run=commands.cmd_watchdog)

    web = verbs.add_parser("web", help="serve the web producer (Flask app under gunicorn)")
    add_settings(web, "web")
    web.set_defaults(run=commands.cmd_web)

    return parser


def verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each verb of `parser` (from build_parser), by verb."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `taskd` and `python -m daemon`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"taskd {args.verb}: error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except redis.RedisError as exc:
        from daemon.redis_errors import fatal_reason, is_transient

        url = getattr(args, "redis_url", None) or Settings().redis_url
        if not is_transient(exc):
            print(f"taskd {args.verb}: error: {fatal_reason(exc, url)}", file=sys.stderr)
            return exitcodes.CONFIG
        print(f"taskd {args.verb}: error: redis unreachable ({exc})", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
