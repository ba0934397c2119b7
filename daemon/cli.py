"""The `taskd` command: parse flags, build Settings, run one verb.

Configuration errors end here with one line on stderr and exit code 78, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, NoReturn

import redis

from daemon import __version__, config, exitcodes
from daemon.config import MAX_SECONDS, SPECS, ConfigError, Settings, env_name, flag_name

CONNECTION_FIELDS = (
    "redis_url",
    "redis_password_file",
    "sentinel_password_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_insecure",
    "connect_timeout",
    "socket_timeout",
    "block_timeout",
    "health_check_interval",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "backoff_base",
    "backoff_cap",
    "log_level",
    "log_format",
)
LOOP_FIELDS = (  # settings of every long-running loop (consume, subscribe)
    "handler",
    "worker_id",
    "stall_timeout",
    "task_timeout",
    "drain_timeout",
    "max_attempts",
    "retry_base",
    "retry_cap",
    "heartbeat_ttl",
    "recovery_interval",
    "metrics_port",
    "metrics_host",
    "heartbeat_file",
    "require_noeviction",
)
PRODUCER_FIELDS = ("wait_replicas", "wait_timeout")  # enqueue, publish, web
CONSUME_FIELDS = ("queues", "prefetch", "concurrency", *LOOP_FIELDS)
EXIT_UNAVAILABLE = 69  # a one-shot command could not reach Redis (or replicas did not confirm)
EXIT_IO = 74  # a producer could not read its input (EX_IOERR)

HELP_EPILOG = """\
Every flag has an environment twin: --block-timeout is TASKD_BLOCK_TIMEOUT, --queue is
TASKD_QUEUES (comma-separated). Precedence: defaults < --config FILE (TOML) < TASKD_* < flags.
Exit codes: 0 clean stop, 70 stall watchdog fired, 75 drain timeout, 78 bad configuration.
"""


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


def _add_setting(parser: argparse.ArgumentParser, name: str, help_text: str = "") -> None:
    spec = SPECS[name]
    default = getattr(Settings(), name)
    shown = ", ".join(default) if isinstance(default, tuple) else default
    text = f"{help_text or spec.expected} (env {env_name(name)}; default {shown!s})"
    if spec.kind == "list":
        parser.add_argument(flag_name(name), dest=name, action="append", help=text)
    elif spec.kind == "bool":
        parser.add_argument(flag_name(name), dest=name, action="store_const", const=True, help=text)
    else:
        parser.add_argument(
            flag_name(name), dest=name, help=text, metavar=name.upper().split("_")[-1]
        )


HELPS = {
    "redis_password_file": "file holding the Redis password (or set TASKD_REDIS_PASSWORD); "
    "keeps it out of ps and configs",
    "tls_ca_file": "CA certificate (PEM) that signed the server certificate, for rediss://",
    "tls_cert_file": "client certificate (PEM) for mutual TLS",
    "tls_key_file": "client key (PEM) for mutual TLS",
    "tls_insecure": "do NOT verify the server certificate (logged loudly; for tests only)",
    "redis_url": "redis://[user:pass@]host:port/db, rediss://, unix:///path.sock or "
    "redis+sentinel://host:port[,host:port]/master/db",
    "queues": "queue to consume; repeat for several (served in the order given)",
    "handler": "module:function called with each task body (built-ins: daemon.handlers:log, "
    ":noop, :sleep, :fail)",
    "worker_id": "stable id of this worker (its processing list); default host:process-name "
    "under supervisord, else host:pid",
    "block_timeout": "seconds one blocking claim waits for a task",
    "socket_timeout": "seconds before a silent connection counts as dead; must exceed "
    "--block-timeout (0 = block timeout + 5)",
    "stall_timeout": "seconds without loop progress before the watchdog exits with 70",
    "task_timeout": "seconds one handler run may take before the watchdog exits with 70",
    "drain_timeout": "seconds the in-flight task may take to finish after SIGTERM",
    "max_attempts": "failed attempts before a task goes to the dead letters",
    "heartbeat_ttl": "seconds a worker's heartbeat lives (0 = 3 x block timeout)",
    "recovery_interval": "seconds between looks for dead peers' tasks (0 = 2 x block timeout)",
    "metrics_port": "port of /metrics, /healthz, /readyz (0 = none)",
    "heartbeat_file": "file the watchdog thread rewrites every second (for taskd watchdog)",
    "connect_timeout": "seconds for TCP connect and the connection handshake",
    "channels": "channel to subscribe to; repeat for several",
    "patterns": "channel pattern to subscribe to (PSUBSCRIBE); repeat for several",
    "ping_interval": "seconds between PINGs while subscribed; silent for twice that = dead",
    "durable": "publish: also push onto the channel's durable list; subscribe: consume that "
    "list reliably instead of the channel (nothing published while down is lost)",
    "web_bind": "HOST:PORT of the web app",
    "web_allowed_hosts": "a Host name the web app answers to besides its --bind address "
    "(name, or name:port); repeat for several (a reverse proxy's public name, a DNS name)",
    "sentinel_password_file": "file holding the password of the sentinels themselves (or set "
    "TASKD_SENTINEL_PASSWORD, or put it in the redis+sentinel:// URL's sentinel_password=)",
    "require_noeviction": "refuse to start (exit 78) unless Redis's maxmemory-policy is "
    "noeviction (any other policy can evict queued tasks)",
    "wait_replicas": "after each push, wait until this many replicas have it (Redis WAIT); "
    "exit 69 / HTTP 503 when they do not confirm within --wait-timeout (0 = do not wait)",
    "wait_timeout": "seconds to wait for --wait-replicas to confirm a push",
    "prefetch": "claim up to N waiting tasks in one round trip (batched claims and acks)",
    "concurrency": "handle up to N tasks at once: N threads for a plain handler, N coroutines "
    "for an async def handler",
}
SUBSCRIBE_FIELDS = ("channels", "patterns", "ping_interval", "durable", *LOOP_FIELDS)


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with settings (env TASKD_CONFIG)")
    for name in CONNECTION_FIELDS:
        _add_setting(parser, name, HELPS.get(name, ""))


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
    _connection_args(consume)
    for name in CONSUME_FIELDS:
        _add_setting(consume, name, HELPS.get(name, ""))
    consume.set_defaults(run=cmd_consume)

    enqueue = verbs.add_parser(
        "enqueue",
        help="push tasks onto a queue",
        description="Push each BODY as one task; with '-' read one task per stdin line.",
    )
    _connection_args(enqueue)
    _add_setting(enqueue, "queues", "queue to push onto")
    for name in PRODUCER_FIELDS:
        _add_setting(enqueue, name, HELPS[name])
    enqueue.add_argument(
        "--delay",
        type=_delay,
        default=0.0,
        metavar="DURATION",
        help="run the tasks this much later: 500ms, 30s, 5m, 1h or plain seconds (they wait in "
        "the queue's delayed set, due on Redis's clock; default 0 = at once)",
    )
    enqueue.add_argument("bodies", nargs="+", metavar="BODY", help="task bodies, or - for stdin")
    enqueue.set_defaults(run=cmd_enqueue)

    subscribe = verbs.add_parser(
        "subscribe",
        help="handle messages published on channels (pub/sub; at-most-once unless --durable)",
        description="Subscribe to channels and patterns with a PING deadline, reconnect and "
        "re-subscribe after any fault, and count the seconds spent unsubscribed.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_args(subscribe)
    for name in SUBSCRIBE_FIELDS:
        _add_setting(subscribe, name, HELPS.get(name, ""))
    subscribe.set_defaults(run=cmd_subscribe)

    publish = verbs.add_parser("publish", help="publish messages on a channel")
    _connection_args(publish)
    _add_setting(publish, "channels", "channel to publish on")
    _add_setting(publish, "durable", HELPS["durable"])
    for name in PRODUCER_FIELDS:
        _add_setting(publish, name, HELPS[name])
    publish.add_argument("bodies", nargs="+", metavar="BODY", help="messages, or - for stdin")
    publish.set_defaults(run=cmd_publish)

    status = verbs.add_parser(
        "status", help="show queue depths, processing lists, workers and dead letters"
    )
    _connection_args(status)
    _add_setting(status, "queues", "queue to show; repeat for several")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=cmd_status)

    dead = verbs.add_parser("dead", help="list, requeue or purge dead letters")
    _connection_args(dead)
    dead.add_argument("action", choices=("list", "requeue", "purge"))
    _add_setting(dead, "queues", "queue whose dead letters to act on")
    dead.add_argument(
        "--limit",
        type=_whole(MAX_DEAD_LIMIT),
        default=100,
        help=f"how many to list (default 100, at most {MAX_DEAD_LIMIT})",
    )
    dead.set_defaults(run=cmd_dead)

    watchdog = verbs.add_parser(
        "watchdog",
        help="supervisord event listener: restart taskd processes whose heartbeat went stale",
        description="Run as [eventlistener:watchdog] with events=TICK_5. Speaks the event "
        "listener protocol on stdin/stdout and logs to stderr only.",
    )
    watchdog.add_argument(
        "--grace",
        type=_positive,
        default=5.0,
        help="seconds beyond a process's stall timeout before its stale heartbeat triggers a "
        "restart (default 5; TICK_5 adds up to 5 s more)",
    )
    watchdog.add_argument(
        "--group",
        action="append",
        help="supervisord group(s) to watch (default: every process with a heartbeat file)",
    )
    watchdog.add_argument(
        "--heartbeat-dir",
        default="",
        help="folder of heartbeat files named <process name>.json (default var/run)",
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
        help="seconds a process of a --group may run without ever writing a heartbeat file "
        "before it is restarted (default 120)",
    )
    watchdog.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="port of the listener's own /metrics (taskd_watchdog_restarts_total; 0 = none)",
    )
    watchdog.set_defaults(run=cmd_watchdog)

    web = verbs.add_parser("web", help="serve the web producer (Flask app under gunicorn)")
    _connection_args(web)
    _add_setting(web, "web_bind", HELPS["web_bind"])
    _add_setting(web, "web_allowed_hosts", HELPS["web_allowed_hosts"])
    _add_setting(web, "queues", "queue that /prodcons pushes onto")
    _add_setting(web, "channels", "channel that /pubsub publishes on")
    _add_setting(web, "drain_timeout", "seconds in-flight requests may take after SIGTERM")
    _add_setting(web, "durable", HELPS["durable"])
    for name in PRODUCER_FIELDS:
        _add_setting(web, name, HELPS[name])
    web.set_defaults(run=cmd_web)

    soak = verbs.add_parser(
        "soak",
        help="soak test: the whole stack under load and scheduled faults, then a verdict "
        "(taskd soak --help; docs/soak.md)",
        add_help=False,
        prefix_chars="\0",  # every argument after `soak` is the soak's own (daemon/soak.py)
    )
    soak.add_argument("soak_args", nargs=argparse.REMAINDER)
    soak.set_defaults(run=cmd_soak)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name) for name in SPECS if hasattr(args, name)}
    return config.load(flags, config_path=args.config)


def _setup_logging(settings: Settings) -> None:
    from daemon.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.tls_insecure:
        import structlog

        structlog.get_logger("taskd").warning(
            "tls.verification_disabled",
            note="--tls-insecure: the server certificate is NOT verified; anyone on the path "
            "can read and change tasks. Use --tls-ca-file instead.",
        )


def _load_handler(settings: Settings) -> Any:
    """The --handler function, or ConfigError when it is missing or does not import."""
    from daemon import handlers

    if not settings.handler:
        raise ConfigError(
            "--handler is missing: expected module:function (env TASKD_HANDLER), "
            "e.g. --handler daemon.handlers:log"
        )
    return handlers.load(settings.handler)


def cmd_consume(args: argparse.Namespace) -> int:
    """Run the consumer until SIGTERM/SIGINT."""
    from daemon.consumer import Consumer
    from daemon.lifecycle import supervise

    settings = _settings(args)
    handler = _load_handler(settings)
    _setup_logging(settings)
    import structlog

    log = structlog.get_logger("taskd")
    consumer = Consumer(settings, handler)
    return supervise(settings, consumer.progress, consumer.link, consumer.stop, consumer.run, log)


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Run the pub/sub subscriber until SIGTERM/SIGINT."""
    from daemon import subscriber

    settings = _settings(args)
    handler = _load_handler(settings)
    if settings.patterns and args.channels is None and settings.channels == Settings().channels:
        # `--pattern P` alone means the patterns only, not also the default channel
        settings = dataclasses.replace(settings, channels=())
    _setup_logging(settings)
    return subscriber.run(settings, handler)


def cmd_watchdog(args: argparse.Namespace) -> int:
    """The supervisord event listener (see daemon/watchdog.py)."""
    from daemon import watchdog

    return watchdog.main(args)


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the web producer under gunicorn."""
    from daemon import web

    settings = _settings(args)
    _setup_logging(settings)
    return web.serve(settings)


def cmd_soak(args: argparse.Namespace) -> int:
    """The soak test (daemon/soak.py parses its own flags; exit 78 on bad ones)."""
    from daemon import soak

    return soak.main(args.soak_args)


def _stdin_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-empty line, without its line ending (LF or CRLF).

    Read as bytes: a body is whatever bytes the line holds, UTF-8 or not.
    """
    for number, line in enumerate(stream, 1):
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
        if line:
            yield number, line


def _bodies(raw: Sequence[str]) -> Iterator[tuple[int, bytes]]:
    """(position, body) of each BODY argument, or of each stdin line for `-`.

    Arguments are turned back into the bytes given (os.fsencode undoes the surrogate escapes
    Python uses for non-UTF-8 argv), so they are pushed exactly as typed too.
    """
    if list(raw) == ["-"]:
        return _stdin_lines(sys.stdin.buffer)
    return enumerate((os.fsencode(body) for body in raw), 1)


class _Positions:
    """Remembers the position of each body handed out, to name the one where a push stopped."""

    def __init__(self, items: Iterable[tuple[int, bytes]]) -> None:
        self.items = items
        self.numbers: list[int] = []

    def __iter__(self) -> Iterator[bytes]:
        for number, body in self.items:
            self.numbers.append(number)
            yield body

    def at(self, index: int) -> int:
        """Position of the body with this index (the next one to read, past the end)."""
        if index < len(self.numbers):
            return self.numbers[index]
        return (self.numbers[-1] if self.numbers else 0) + 1


def _producer_settings(settings: Settings) -> Settings:
    """`settings` with a socket timeout that outlasts a WAIT of --wait-timeout."""
    if not settings.wait_replicas:
        return settings
    needed = settings.wait_timeout + settings.connect_timeout
    return dataclasses.replace(settings, socket_timeout=max(settings.socket_timeout, needed))


def _stopped(error: BaseException, url: str) -> tuple[int, str]:
    """(exit code, reason) for a producer that stopped on `error`."""
    from daemon.connection import fatal_reason, is_transient
    from daemon.producer import ReplicasNotConfirmed

    if isinstance(error, ReplicasNotConfirmed):
        return EXIT_UNAVAILABLE, str(error)
    if isinstance(error, redis.RedisError):
        if is_transient(error) and isinstance(error, redis.ConnectionError | redis.TimeoutError):
            return EXIT_UNAVAILABLE, f"redis unreachable ({error})"
        if is_transient(error):  # an error reply that can pass: OOM, READONLY, LOADING
            return EXIT_UNAVAILABLE, f"redis refused the push ({error})"
        return exitcodes.CONFIG, fatal_reason(error, url)
    if isinstance(error, OSError):
        return EXIT_IO, f"cannot read the input ({error.strerror or error})"
    raise error


def _client(settings: Settings) -> Any:
    from daemon.connection import make_client

    return make_client(settings, client_name="taskd-cli")


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Push tasks; prints how many and the queue, also when it stops part-way."""
    from daemon.producer import PushStopped, ReplicasNotConfirmed, enqueue_many

    settings = _producer_settings(_settings(args))
    queue = settings.queues[0]
    positions = _Positions(_bodies(args.bodies))
    where = "line" if list(args.bodies) == ["-"] else "BODY"
    try:
        pushed = enqueue_many(
            _client(settings),
            queue,
            positions,
            settings.wait_replicas,
            settings.wait_timeout,
            delay=args.delay,
        )
    except PushStopped as stop:
        code, reason = _stopped(stop.cause, settings.redis_url)
        if isinstance(stop.cause, ReplicasNotConfirmed):
            print(
                f"taskd enqueue: error: pushed {stop.pushed} task(s) onto {queue}, but "
                f"{reason}; stopped there",
                file=sys.stderr,
            )
        else:
            print(
                f"taskd enqueue: error: stopped at {where} {positions.at(stop.pushed)}: "
                f"{reason}; pushed {stop.pushed} task(s) onto {queue} before it",
                file=sys.stderr,
            )
        return code
    if args.delay > 0:
        print(f"scheduled {pushed} task(s) on {queue} to run in {args.delay:g} s")
    else:
        print(f"enqueued {pushed} task(s) on {queue}")
    return exitcodes.OK


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish messages; warns when nobody was listening (pub/sub keeps nothing)."""
    from daemon.producer import ReplicasNotConfirmed, publish

    settings = _producer_settings(_settings(args))
    channel = settings.channels[0]
    client = _client(settings)
    sent = listened = current = done = 0
    where = "line" if list(args.bodies) == ["-"] else "BODY"
    try:
        for current, body in _bodies(args.bodies):
            receivers = publish(
                client,
                channel,
                body,
                durable=settings.durable,
                wait_replicas=settings.wait_replicas,
                wait_timeout=settings.wait_timeout,
            )
            sent, done = sent + 1, current
            listened += receivers > 0
    except ReplicasNotConfirmed as exc:
        print(
            f"taskd publish: error: published {sent + 1} message(s) on {channel}, but {exc}; "
            "stopped there",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except (redis.RedisError, OSError) as exc:
        code, reason = _stopped(exc, settings.redis_url)
        at = current if current > done else done + 1
        print(
            f"taskd publish: error: stopped at {where} {at}: {reason}; "
            f"published {sent} message(s) on {channel} before it",
            file=sys.stderr,
        )
        return code
    print(f"published {sent} message(s) on {channel}")
    if sent and not listened:
        print("warning: no subscriber was listening; pub/sub keeps nothing", file=sys.stderr)
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    """Depths, processing lists, workers and dead letters of each queue."""
    from daemon.status import queue_status

    settings = _settings(args)
    client = _client(settings)
    rows = [queue_status(client, q) for q in settings.queues]
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return exitcodes.OK
    for row in rows:
        print(
            f"queue {row.queue}: pending {row.pending}  processing {row.processing}  "
            f"delayed {row.delayed}  dead {row.dead}"
        )
        if row.oldest_age_seconds is not None:
            print(f"  oldest pending task: {row.oldest_age_seconds:.1f} s")
        for w in row.workers:
            state = "alive" if w["alive"] else "DEAD (tasks will be recovered)"
            print(f"  worker {w['worker']}: {state}, holding {w['processing']}")
        if not row.workers:
            print("  no workers")
    if rows:
        print(f"redis maxmemory-policy: {rows[0].eviction_policy or 'unknown'}")
        if rows[0].eviction_warning:
            print(f"warning: {rows[0].eviction_warning}", file=sys.stderr)
    return exitcodes.OK


def cmd_dead(args: argparse.Namespace) -> int:
    """List, requeue or purge the dead letters of one queue."""
    from daemon.keys import QueueKeys
    from daemon.reliable import ReliableQueue, dead_letter_body
    from daemon.status import dead_letters

    settings = _settings(args)
    queue = settings.queues[0]
    client = _client(settings)
    if args.action == "list":
        for doc in dead_letters(client, queue, max(1, args.limit)):
            print(json.dumps(doc, ensure_ascii=False))
        return exitcodes.OK
    if args.action == "purge":
        count = int(client.llen(QueueKeys(queue).dead))
        client.delete(QueueKeys(queue).dead)
        print(f"purged {count} dead letter(s) of {queue}")
        return exitcodes.OK
    reliable = ReliableQueue(client, queue, "taskd-cli")
    requeued = skipped = 0
    for entry in client.lrange(QueueKeys(queue).dead, 0, -1):
        from daemon.reliable import parse_dead_letter

        body = dead_letter_body(parse_dead_letter(entry))
        if body is None:
            skipped += 1
            continue
        requeued += reliable.requeue_dead(entry, body)
    print(f"requeued {requeued} dead letter(s) onto {queue}; {skipped} unreadable left in place")
    return exitcodes.OK


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
        from daemon.connection import fatal_reason, is_transient

        url = getattr(args, "redis_url", None) or Settings().redis_url
        if not is_transient(exc):
            print(f"taskd {args.verb}: error: {fatal_reason(exc, url)}", file=sys.stderr)
            return exitcodes.CONFIG
        print(f"taskd {args.verb}: error: redis unreachable ({exc})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
