"""`Settings`: every setting of taskd, each declared once (kind, default, help, verbs).

The flags of each verb, the ``TASKD_*`` environment names, the TOML keys and the checks are
generated from these declarations; adding a setting is adding one field here. Derived
settings (the socket timeout, the heartbeat TTL, ...) are computed at construction when not
given, so a Settings built in code is complete without any further call.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon import redis_url, settings_rules
from daemon.keys import DEFAULT_CHANNEL, DEFAULT_QUEUE, MAX_SHARDS, shard_names
from daemon.settings_spec import (
    CONNECTED,
    CONSUME,
    DEAD,
    ENQUEUE,
    LOOPS,
    PRODUCERS,
    PUBLISH,
    STATUS,
    SUBSCRIBE,
    WEB,
    Choice,
    ConfigError,
    File,
    Flag,
    Names,
    Seconds,
    Text,
    Whole,
    derived,
    env_name,
    flag_name,
    is_derived_unset,
    rows,
    secret,
    setting,
)

SOCKET_MARGIN = 5.0  # default socket timeout = block timeout + this
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
PUBSUB_KINDS = ("auto", "classic", "sharded")
# Linux's own limits (TCP_KEEPIDLE/TCP_KEEPINTVL <= 32767 s, TCP_KEEPCNT <= 127): beyond them
# setsockopt fails with EINVAL, which would look like an unreachable Redis retried for ever.
MAX_KEEPALIVE_SECONDS = 32767
MAX_KEEPALIVE_COUNT = 127
SECONDS_ABOVE_BLOCK = "seconds larger than the block timeout"
PORT_OR_NONE = "a TCP port 1-65535, or 0 for none"


def _is_handler(text: str) -> bool:
    return text.count(":") == 1 and all(text.split(":"))


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


@dataclass(frozen=True)
class Settings:
    """Everything a taskd process is told; frozen so no loop can change a policy under another.

    A derived field left out is computed from the others at construction; dataclasses.replace
    copies it as it is (pass it as DERIVED to compute it again from the new values).
    """

    # connection: every verb that talks to Redis
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "redis://[user:pass@]host:port/db, rediss://, unix:///path.sock or "
        "redis+sentinel://host:port[,host:port]/master/db",
        Text(redis_url.EXPECTED, example="redis://127.0.0.1:6380/1"),
        CONNECTED,
    )
    redis_password_file: str = setting(
        "",
        "file holding the Redis password (or set TASKD_REDIS_PASSWORD); "
        "keeps it out of ps and configs",
        Text("a readable file holding the Redis password"),
        CONNECTED,
    )
    redis_password: str = secret("the Redis password", "redis_password_file")
    sentinel_password_file: str = setting(
        "",
        "file holding the password of the sentinels themselves (or set "
        "TASKD_SENTINEL_PASSWORD, or put it in the redis+sentinel:// URL's sentinel_password=)",
        Text("a readable file holding the Sentinel password"),
        CONNECTED,
    )
    sentinel_password: str = secret("the Sentinels' own password", "sentinel_password_file")
    tls_ca_file: str = setting(
        "",
        "CA certificate (PEM) that signed the server certificate, for rediss://",
        File("a PEM file of the CA that signed the server certificate"),
        CONNECTED,
    )
    tls_cert_file: str = setting(
        "",
        "client certificate (PEM) for mutual TLS",
        File("a PEM client certificate (mutual TLS)"),
        CONNECTED,
    )
    tls_key_file: str = setting(
        "",
        "client key (PEM) for mutual TLS",
        File("the PEM key of the client certificate"),
        CONNECTED,
    )
    tls_insecure: bool = setting(
        False,
        "do NOT verify the server certificate (logged loudly; for tests only)",
        Flag(),
        CONNECTED,
    )
    connect_timeout: float = setting(
        2.0, "seconds for TCP connect and the connection handshake", Seconds(), CONNECTED
    )
    block_timeout: float = setting(
        5.0, "seconds one blocking claim waits for a task", Seconds(), CONNECTED
    )
    socket_timeout: float = derived(
        lambda s: s.block_timeout + SOCKET_MARGIN,
        "block timeout + 5",
        "seconds before a silent connection counts as dead; must exceed --block-timeout",
        Seconds(SECONDS_ABOVE_BLOCK, zero=True, example="12"),
        CONNECTED,
    )
    health_check_interval: float = setting(
        15.0,
        "seconds a pooled connection may sit idle before it is PINGed on next use (0 = never)",
        Seconds("seconds >= 0", zero=True),
        CONNECTED,
    )
    keepalive_idle: int = setting(
        10,
        "seconds of silence on a connection before TCP keepalive probes start",
        Whole("whole seconds > 0", high=MAX_KEEPALIVE_SECONDS),
        CONNECTED,
    )
    keepalive_interval: int = setting(
        5,
        "seconds between TCP keepalive probes",
        Whole("whole seconds > 0", high=MAX_KEEPALIVE_SECONDS),
        CONNECTED,
    )
    keepalive_count: int = setting(
        3,
        "unanswered TCP keepalive probes before the connection counts as dead",
        Whole("a whole number > 0", high=MAX_KEEPALIVE_COUNT),
        CONNECTED,
    )
    backoff_base: float = setting(
        0.2,
        "seconds of the first wait before reconnecting (doubles per failure, with jitter)",
        Seconds(),
        CONNECTED,
    )
    backoff_cap: float = setting(
        5.0, "longest wait in seconds between reconnect attempts", Seconds(), CONNECTED
    )
    log_level: str = setting(
        "info",
        "log level: debug, info, warning or error",
        Choice(
            "debug, info, warning or error", example="debug", choices=LOG_LEVELS, fold_case=True
        ),
        CONNECTED,
    )
    log_format: str = setting(
        "auto",
        "log format: json, console, or auto (console on a terminal, else json)",
        Choice("auto, json or console", example="json", choices=LOG_FORMATS),
        CONNECTED,
    )
    # what is served or produced on
    queues: tuple[str, ...] = setting(
        (DEFAULT_QUEUE,),
        "queue to consume; repeat for several (served in the order given)",
        Names("one or more queue names", required=True),
        (CONSUME, ENQUEUE, STATUS, DEAD, WEB),
        flag="queue",
        verb_help={
            ENQUEUE: "queue to push onto",
            STATUS: "queue to show; repeat for several",
            DEAD: "queue whose dead letters to act on",
            WEB: "queue that /prodcons pushes onto",
        },
    )
    shards: int = setting(
        1,
        "spread each queue over N shards {Q:0} .. {Q:N-1}, each in a cluster slot of its "
        "own: producers push onto them in turn, consumers serve all of them",
        Whole(f"a whole number 1-{MAX_SHARDS}", high=MAX_SHARDS),
        (CONSUME, ENQUEUE, STATUS, DEAD, WEB),
        metavar="N",
        verb_help={
            STATUS: "show each queue as its N shards, and their sum",
            DEAD: "act on the dead letters of each of the queue's N shards",
        },
    )
    channels: tuple[str, ...] = setting(
        (DEFAULT_CHANNEL,),
        "channel to subscribe to; repeat for several",
        Names("one or more channel names"),
        (SUBSCRIBE, PUBLISH, WEB),
        flag="channel",
        verb_help={PUBLISH: "channel to publish on", WEB: "channel that /pubsub publishes on"},
    )
    patterns: tuple[str, ...] = setting(
        (),
        "channel pattern to subscribe to (PSUBSCRIBE); repeat for several",
        Names("channel patterns such as news.*"),
        (SUBSCRIBE,),
        flag="pattern",
    )
    pubsub: str = setting(
        "auto",
        "pub/sub kind: classic (PUBLISH/SUBSCRIBE/PSUBSCRIBE), sharded (SPUBLISH/SSUBSCRIBE, "
        "Redis >= 7, no --pattern) or auto (classic on one node or Sentinel; on a cluster "
        "whose nodes have SPUBLISH: publish sharded, subscribe with both)",
        Choice("auto, classic or sharded", example="classic", choices=PUBSUB_KINDS),
        (SUBSCRIBE, PUBLISH, WEB),
        metavar="KIND",
    )
    ping_interval: float = setting(
        5.0,
        "seconds between PINGs while subscribed; silent for twice that = dead",
        Seconds(),
        (SUBSCRIBE,),
    )
    durable: bool = setting(
        False,
        "publish: also push onto the channel's durable list; subscribe: consume that "
        "list reliably instead of the channel (nothing published while down is lost)",
        Flag(),
        (SUBSCRIBE, PUBLISH, WEB),
    )
    prefetch: int = setting(
        1,
        "claim up to N waiting tasks in one round trip (batched claims and acks)",
        Whole("a whole number 1-1000", high=1000),
        (CONSUME,),
        metavar="N",
    )
    concurrency: int = setting(
        1,
        "handle up to N tasks at once: N threads for a plain handler, N coroutines "
        "for an async def handler",
        Whole("a whole number 1-1000", high=1000),
        (CONSUME,),
        metavar="N",
    )
    # the long-running loops (consume, subscribe)
    handler: str = setting(
        "",
        "module:function called with each task body (built-ins: daemon.handlers:log, "
        ":noop, :sleep, :fail)",
        Text("module:function, e.g. daemon.handlers:log", example="m:f", valid=_is_handler),
        LOOPS,
    )
    worker_name: str = setting(
        "",
        "the last part of the default worker id, stable across restarts (e.g. consumer-1 "
        "under systemd); the host and machine tag before it keep it unique across hosts",
        Text(
            "a name without spaces or colons",
            example="consumer-1",
            valid=lambda t: not any(c.isspace() or c == ":" for c in t),
        ),
        LOOPS,
    )
    worker_id: str = setting(
        "",
        "stable id of this worker (its processing list); default "
        "<host>:<machine tag>:<name>, name = --worker-name, else the supervisord process "
        "name, else the pid (the tag: 8 hex from /etc/machine-id, and the PID namespace in "
        "a container)",
        Text("a worker id without spaces", valid=lambda t: not any(c.isspace() for c in t)),
        LOOPS,
    )
    stall_timeout: float = setting(
        60.0,
        "seconds without loop progress before the watchdog exits with 70",
        Seconds("seconds larger than block timeout + socket timeout margin", example="90"),
        LOOPS,
    )
    task_timeout: float = setting(
        300.0,
        "seconds one handler run may take before the watchdog exits with 70",
        Seconds(),
        LOOPS,
    )
    drain_timeout: float = setting(
        30.0,
        "seconds the in-flight task may take to finish after SIGTERM",
        Seconds(),
        (*LOOPS, WEB),
        verb_help={WEB: "seconds in-flight requests may take after SIGTERM"},
    )
    max_attempts: int = setting(
        5,
        "failed attempts before a task goes to the dead letters",
        Whole("a whole number >= 1"),
        LOOPS,
    )
    retry_base: float = setting(
        1.0,
        "seconds before the first retry of a failed task (doubles per attempt)",
        Seconds(),
        LOOPS,
    )
    retry_cap: float = setting(
        300.0, "longest wait in seconds before retrying a failed task", Seconds(), LOOPS
    )
    heartbeat_ttl: float = derived(
        lambda s: 3 * s.block_timeout,
        "3 x block timeout",
        "seconds a worker's heartbeat lives",
        Seconds(SECONDS_ABOVE_BLOCK, zero=True, example="20"),
        LOOPS,
    )
    recovery_interval: float = derived(
        lambda s: 2 * s.block_timeout,
        "2 x block timeout",
        "seconds between looks for dead peers' tasks",
        Seconds("seconds > 0", zero=True),
        LOOPS,
    )
    metrics_port: int = setting(
        0,
        "port of /metrics, /healthz, /readyz (0 = none)",
        Whole(PORT_OR_NONE, low=0, high=65535, in_range=PORT_OR_NONE),
        LOOPS,
    )
    metrics_host: str = setting(
        "127.0.0.1",
        "address the metrics server binds, e.g. 127.0.0.1",
        Text("an address to bind, e.g. 127.0.0.1"),
        LOOPS,
    )
    heartbeat_file: str = setting(
        "",
        "file the watchdog thread rewrites every second (for taskd watchdog)",
        Text("a file path"),
        LOOPS,
    )
    require_noeviction: bool = setting(
        False,
        "refuse to start (exit 78) unless Redis's maxmemory-policy is "
        "noeviction (any other policy can evict queued tasks)",
        Flag(),
        LOOPS,
    )
    # producers (enqueue, publish, web)
    wait_replicas: int = setting(
        0,
        "after each push, wait until this many replicas have it (Redis WAIT); "
        "exit 69 / HTTP 503 when they do not confirm within --wait-timeout (0 = do not wait)",
        Whole("a whole number of replicas >= 0", low=0, high=1000),
        PRODUCERS,
    )
    wait_timeout: float = setting(
        1.0, "seconds to wait for --wait-replicas to confirm a push", Seconds(), PRODUCERS
    )
    # the web app
    web_bind: str = setting(
        "127.0.0.1:8000",
        "HOST:PORT of the web app",
        Text(
            "HOST:PORT to serve the web app on",
            example="127.0.0.1:8001",
            valid=_is_host_port,
            invalid="HOST:PORT, e.g. 127.0.0.1:8000",
        ),
        (WEB,),
        flag="bind",
    )
    web_allowed_hosts: tuple[str, ...] = setting(
        (),
        "a Host name the web app answers to besides its --bind address "
        "(name, or name:port); repeat for several (a reverse proxy's public name, a DNS name)",
        Names("host names (name or name:port, * for any) of the web app"),
        (WEB,),
        flag="allowed_host",
    )
    web_token: str = secret("bearer token of the web app's /api/*")

    def __post_init__(self) -> None:
        """Compute each derived setting that was not given from the others."""
        for name, row in rows(Settings).items():
            if row.derive is not None and is_derived_unset(getattr(self, name)):
                object.__setattr__(self, name, row.derive(self))

    @property
    def queue_shards(self) -> tuple[tuple[str, ...], ...]:
        """Each queue named, as the queues it is spread over (itself alone without --shards)."""
        return tuple(shard_names(queue, self.shards) for queue in self.queues)

    @property
    def served_queues(self) -> tuple[str, ...]:
        """The Redis queues behind the names: every shard of every queue, in order."""
        return tuple(name for shards in self.queue_shards for name in shards)

    def with_derived(self) -> Settings:
        """Kept for callers: derived settings are computed at construction now."""
        return self

    def validate(self) -> Settings:
        """Check every value, then the cross-field rules; return self so callers can chain."""
        for name, row in rows(Settings).items():
            value = getattr(self, name)
            problem = row.kind.problem(value)
            if problem:
                env = f" (env {env_name(name)})" if row.kind.names_env else ""
                raise ConfigError(f"{flag_name(name, row)}={value!r}{env}: {problem}")
        for rule in settings_rules.RULES:
            message = rule(self)
            if message:
                raise ConfigError(message)
        return self
