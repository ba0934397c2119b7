"""The verbs' commands: build Settings from the parsed flags, then run one loop or one action.

Each returns the process exit code (daemon/exitcodes.py); ConfigError and Redis errors that
escape are turned into one line and an exit code by daemon/cli.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import redis

from daemon import config, exitcodes, settings_rules
from daemon.config import DECLARED, ConfigError, Settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the flags given (argparse leaves the others None) and the other sources."""
    flags = {name: getattr(args, name) for name in DECLARED if hasattr(args, name)}
    settings = config.load(flags, config_path=args.config)
    rules = settings_rules.QUEUE_RULES if hasattr(args, "queues") else ()
    rules += settings_rules.CHANNEL_RULES if hasattr(args, "channels") else ()
    for rule in rules:  # the rules of the keys this verb uses (a cluster needs hash tags)
        message = rule(settings)
        if message:
            raise ConfigError(message)
    return settings


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

    settings = settings_from_args(args)
    handler = _load_handler(settings)
    _setup_logging(settings)
    return supervise(Consumer(settings, handler))


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Run the pub/sub subscriber until SIGTERM/SIGINT."""
    from daemon import subscriber

    settings = settings_from_args(args)
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

    settings = settings_from_args(args)
    _setup_logging(settings)
    return web.serve(settings)


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
    from daemon.producer import ReplicasNotConfirmed
    from daemon.redis_errors import fatal_reason, is_transient

    if isinstance(error, ReplicasNotConfirmed):
        return exitcodes.UNAVAILABLE, str(error)
    if isinstance(error, redis.RedisError):
        if is_transient(error) and isinstance(error, redis.ConnectionError | redis.TimeoutError):
            return exitcodes.UNAVAILABLE, f"redis unreachable ({error})"
        if is_transient(error):  # an error reply that can pass: OOM, READONLY, LOADING
            return exitcodes.UNAVAILABLE, f"redis refused the push ({error})"
        return exitcodes.CONFIG, fatal_reason(error, url)
    if isinstance(error, OSError):
        return exitcodes.IO, f"cannot read the input ({error.strerror or error})"
    raise error


def _client(settings: Settings) -> Any:
    from daemon.connection import make_client

    return make_client(settings, client_name="taskd-cli")


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Push tasks; prints how many and the queue, also when it stops part-way."""
    from daemon.producer import PushStopped, ReplicasNotConfirmed, enqueue_many

    settings = _producer_settings(settings_from_args(args))
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
            shards=settings.shards,
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
    if settings.shards > 1:
        queue = f"{queue} (over {settings.shards} shards)"
    if args.delay > 0:
        print(f"scheduled {pushed} task(s) on {queue} to run in {args.delay:g} s")
    else:
        print(f"enqueued {pushed} task(s) on {queue}")
    return exitcodes.OK


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish messages; warns when nobody was listening (pub/sub keeps nothing).

    `--pubsub` chooses PUBLISH or SPUBLISH (daemon/pubsub_kind.py, decided before the first
    message); the line on stdout names the command used.
    """
    from daemon.producer import ReplicasNotConfirmed, publish
    from daemon.pubsub_kind import (
        CLASSIC,
        SHARDED,
        PublishKind,
        ShardedUnavailable,
        is_sharded_missing,
    )
    from daemon.redis_url import redact

    settings = _producer_settings(settings_from_args(args))
    channel = settings.channels[0]
    client = _client(settings)
    choice = PublishKind(settings.pubsub)
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
                kind=CLASSIC if settings.durable else choice.kind(client, channel),
            )
            sent, done = sent + 1, current
            listened += receivers > 0
    except ShardedUnavailable as exc:
        print(f"taskd publish: error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except ReplicasNotConfirmed as exc:
        print(
            f"taskd publish: error: published {sent + 1} message(s) on {channel}, but {exc}; "
            "stopped there",
            file=sys.stderr,
        )
        return exitcodes.UNAVAILABLE
    except (redis.RedisError, OSError) as exc:
        if is_sharded_missing(exc):  # COMMAND INFO did not say, SPUBLISH itself did
            error = ShardedUnavailable(redact(settings.redis_url))
            print(f"taskd publish: error: {error}", file=sys.stderr)
            return exitcodes.CONFIG
        code, reason = _stopped(exc, settings.redis_url)
        at = current if current > done else done + 1
        print(
            f"taskd publish: error: stopped at {where} {at}: {reason}; "
            f"published {sent} message(s) on {channel} before it",
            file=sys.stderr,
        )
        return code
    sharded = sent and not settings.durable and choice.kind(client, channel) == SHARDED
    print(f"published {sent} message(s) on {channel}" + (" (SPUBLISH)" if sharded else ""))
    if sent and not listened:
        print("warning: no subscriber was listening; pub/sub keeps nothing", file=sys.stderr)
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    """Depths, processing lists, workers and dead letters of each queue."""
    from daemon.status import queue_status

    settings = settings_from_args(args)
    client = _client(settings)
    rows = [queue_status(client, q, settings.shards) for q in settings.queues]
    _warn_unserved_shards(client, settings)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return exitcodes.OK
    for row in rows:
        over = f" (sum of {len(row.shards)} shards)" if row.shards else ""
        node = f" on {row.node}" if row.node else ""
        print(
            f"queue {row.queue}{over}{node}: pending {row.pending}  processing "
            f"{row.processing}  delayed {row.delayed}  dead {row.dead}"
        )
        for shard in row.shards:
            node = f" on {shard['node']}" if shard["node"] else ""
            print(
                f"  shard {shard['queue']}{node}: pending {shard['pending']}  processing "
                f"{shard['processing']}  delayed {shard['delayed']}  dead {shard['dead']}"
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


def _purge_dead(client: Any, queue: str) -> int:
    from daemon.keys import QueueKeys

    dead = QueueKeys(queue).dead
    count = int(client.llen(dead))
    client.delete(dead)
    return count


def _requeue_dead(client: Any, queue: str) -> tuple[int, int]:
    """Every dead letter of `queue` back onto it; (requeued, unreadable left in place)."""
    from daemon.dead_letters import dead_letter_body, parse_dead_letter
    from daemon.keys import QueueKeys
    from daemon.reliable import ReliableQueue

    reliable = ReliableQueue(client, queue, "taskd-cli")
    requeued = skipped = 0
    for entry in client.lrange(QueueKeys(queue).dead, 0, -1):
        body = dead_letter_body(parse_dead_letter(entry))
        if body is None:
            skipped += 1
            continue
        requeued += reliable.requeue_dead(entry, body)
    return requeued, skipped


def _warn_unserved_shards(client: Any, settings: Settings) -> None:
    """Tasks on the shard past the ones asked for: more shards than --shards, or unsharded.
    An ACL user limited to the queues it serves cannot tell: nothing is said."""
    from daemon.keys import unserved_shard
    from daemon.status import unserved_tasks

    found = unserved_tasks(client, settings.queues, settings.shards) or {}
    for queue in settings.queues:
        shard = unserved_shard(queue, settings.shards)
        if shard in found:
            print(
                f"warning: {shard} holds {found[shard]} task(s): {queue} has more shards "
                f"than --shards={settings.shards}; give producers and consumers the same "
                "--shards",
                file=sys.stderr,
            )


def cmd_dead(args: argparse.Namespace) -> int:
    """List, requeue or purge the dead letters of one queue (of each of its shards)."""
    from daemon.keys import shard_names
    from daemon.status import dead_letters_of

    settings = settings_from_args(args)
    queue = settings.queues[0]
    client = _client(settings)
    shards = shard_names(queue, settings.shards)
    if args.action == "list":
        for doc in dead_letters_of(client, shards, max(1, args.limit)):
            print(json.dumps(doc, ensure_ascii=False))
        return exitcodes.OK
    onto = queue if len(shards) == 1 else f"{queue}'s {len(shards)} shards"
    if args.action == "purge":
        count = sum(_purge_dead(client, shard) for shard in shards)
        print(f"purged {count} dead letter(s) of {onto}")
        return exitcodes.OK
    requeued = skipped = 0
    for shard in shards:
        done, left = _requeue_dead(client, shard)
        requeued, skipped = requeued + done, skipped + left
    print(f"requeued {requeued} dead letter(s) onto {onto}; {skipped} unreadable left in place")
    return exitcodes.OK
