"""Settings: defaults < ``--config FILE`` (TOML) < ``TASKD_*`` environment < command-line flags.

This is the only module that reads the environment. Every setting has a flag
(``--block-timeout``) and an environment twin (``TASKD_BLOCK_TIMEOUT``); list settings take
several flags or a comma-separated environment value. Bad values raise ConfigError with one
line that names the value, where it came from, and what was expected; the CLI turns that into
exit code 78.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon import redis_url
from daemon.keys import DEFAULT_CHANNEL, DEFAULT_QUEUE, QueueKeys

ENV_PREFIX = "TASKD_"
SOCKET_MARGIN = 5.0  # default socket timeout = block timeout + this


class ConfigError(Exception):
    """A configuration value is unusable; str(error) is the one line to show the user."""


@dataclass(frozen=True)
class Settings:
    """Everything a taskd process is told; frozen so no loop can change a policy under another."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: str = ""  # the password, kept out of command lines and configs
    redis_password: str = field(default="", repr=False)  # from the file or TASKD_REDIS_PASSWORD
    sentinel_password_file: str = ""  # password of the sentinels themselves (requirepass)
    sentinel_password: str = field(default="", repr=False)  # file or TASKD_SENTINEL_PASSWORD
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_insecure: bool = False  # no certificate verification: logged loudly at start
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    channels: tuple[str, ...] = (DEFAULT_CHANNEL,)
    patterns: tuple[str, ...] = ()
    handler: str = ""
    worker_id: str = ""
    block_timeout: float = 5.0
    socket_timeout: float = 0.0  # 0 = block timeout + SOCKET_MARGIN
    connect_timeout: float = 2.0
    health_check_interval: float = 15.0
    keepalive_idle: int = 10
    keepalive_interval: int = 5
    keepalive_count: int = 3
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    max_attempts: int = 5
    retry_base: float = 1.0
    retry_cap: float = 300.0
    heartbeat_ttl: float = 0.0  # 0 = 3 x block timeout
    recovery_interval: float = 0.0  # 0 = 2 x block timeout
    stall_timeout: float = 60.0
    task_timeout: float = 300.0
    drain_timeout: float = 30.0
    ping_interval: float = 5.0  # pub/sub: PING this often; silent for 2 x this = dead
    durable: bool = False  # publish/subscribe: also use the durable list of each channel
    web_bind: str = "127.0.0.1:8000"
    web_token: str = field(default="", repr=False)  # TASKD_WEB_TOKEN: bearer token of /api/*
    web_allowed_hosts: tuple[str, ...] = ()  # Host names the web app answers besides its bind
    metrics_port: int = 0  # 0 = no metrics server
    metrics_host: str = "127.0.0.1"
    heartbeat_file: str = ""
    log_level: str = "info"
    log_format: str = "auto"
    require_noeviction: bool = False  # refuse to start unless maxmemory-policy is noeviction
    wait_replicas: int = 0  # producers: replicas that must confirm each push (WAIT); 0 = none
    wait_timeout: float = 1.0  # producers: seconds to wait for those replicas
    prefetch: int = 1  # consume: tasks claimed per round trip (batched claims and acks)
    concurrency: int = 1  # consume: tasks handled at once (threads, or coroutines if async)

    def with_derived(self) -> Settings:
        """Fill in values that default to a function of others (socket timeout, TTL, ...)."""
        changes: dict[str, Any] = {}
        if not self.socket_timeout:
            changes["socket_timeout"] = self.block_timeout + SOCKET_MARGIN
        if not self.heartbeat_ttl:
            changes["heartbeat_ttl"] = 3 * self.block_timeout
        if not self.recovery_interval:
            changes["recovery_interval"] = 2 * self.block_timeout
        return dataclasses.replace(self, **changes) if changes else self

    def validate(self) -> Settings:
        """Check cross-field rules; return self so callers can chain."""
        _validate(self)
        return self


@dataclass(frozen=True)
class _Spec:
    kind: str  # "float" (> 0), "float0" (>= 0), "int" (> 0), "int0" (>= 0), "str", "list", "bool"
    expected: str


SPECS: dict[str, _Spec] = {
    "redis_url": _Spec("str", redis_url.EXPECTED),
    "redis_password_file": _Spec("str", "a readable file holding the Redis password"),
    "sentinel_password_file": _Spec("str", "a readable file holding the Sentinel password"),
    "tls_ca_file": _Spec("str", "a PEM file of the CA that signed the server certificate"),
    "tls_cert_file": _Spec("str", "a PEM client certificate (mutual TLS)"),
    "tls_key_file": _Spec("str", "the PEM key of the client certificate"),
    "tls_insecure": _Spec("bool", "true or false"),
    "queues": _Spec("list", "one or more queue names"),
    "channels": _Spec("list", "one or more channel names"),
    "patterns": _Spec("list", "channel patterns such as news.*"),
    "handler": _Spec("str", "module:function, e.g. daemon.handlers:log"),
    "worker_id": _Spec("str", "a worker id without spaces"),
    "block_timeout": _Spec("float", "seconds > 0"),
    "socket_timeout": _Spec("float0", "seconds larger than the block timeout"),
    "connect_timeout": _Spec("float", "seconds > 0"),
    "health_check_interval": _Spec("float0", "seconds >= 0"),
    "keepalive_idle": _Spec("int", "whole seconds > 0"),
    "keepalive_interval": _Spec("int", "whole seconds > 0"),
    "keepalive_count": _Spec("int", "a whole number > 0"),
    "backoff_base": _Spec("float", "seconds > 0"),
    "backoff_cap": _Spec("float", "seconds > 0"),
    "max_attempts": _Spec("int", "a whole number >= 1"),
    "retry_base": _Spec("float", "seconds > 0"),
    "retry_cap": _Spec("float", "seconds > 0"),
    "heartbeat_ttl": _Spec("float0", "seconds larger than the block timeout"),
    "recovery_interval": _Spec("float0", "seconds > 0"),
    "stall_timeout": _Spec("float", "seconds larger than block timeout + socket timeout margin"),
    "task_timeout": _Spec("float", "seconds > 0"),
    "drain_timeout": _Spec("float", "seconds > 0"),
    "ping_interval": _Spec("float", "seconds > 0"),
    "durable": _Spec("bool", "true or false"),
    "web_bind": _Spec("str", "HOST:PORT to serve the web app on"),
    "web_allowed_hosts": _Spec("list", "host names (name or name:port, * for any) of the web app"),
    "metrics_port": _Spec("int0", "a TCP port 1-65535, or 0 for none"),
    "metrics_host": _Spec("str", "an address to bind, e.g. 127.0.0.1"),
    "heartbeat_file": _Spec("str", "a file path"),
    "log_level": _Spec("str", "debug, info, warning or error"),
    "log_format": _Spec("str", "auto, json or console"),
    "require_noeviction": _Spec("bool", "true or false"),
    "wait_replicas": _Spec("int0", "a whole number of replicas >= 0"),
    "wait_timeout": _Spec("float", "seconds > 0"),
    "prefetch": _Spec("int", "a whole number 1-1000"),
    "concurrency": _Spec("int", "a whole number 1-1000"),
}
# TASKD_* variables that are not settings of their own (secrets and the config file path).
EXTRA_ENV = ("CONFIG", "REDIS_PASSWORD", "SENTINEL_PASSWORD", "WEB_TOKEN")

MAX_SECONDS = 365 * 86400.0  # longer than any useful deadline; socket and time_t safe
# Linux's own limits (TCP_KEEPIDLE/TCP_KEEPINTVL <= 32767 s, TCP_KEEPCNT <= 127): beyond them
# setsockopt fails with EINVAL, which would look like an unreachable Redis retried for ever.
INT_RANGES = {
    "keepalive_idle": (1, 32767),
    "keepalive_interval": (1, 32767),
    "keepalive_count": (1, 127),
    "max_attempts": (1, 1_000_000),
    "wait_replicas": (0, 1000),
    "prefetch": (1, 1000),
    "concurrency": (1, 1000),
}

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def flag_name(field_name: str) -> str:
    """`block_timeout` -> `--block-timeout` (list settings use the singular: `--queue`)."""
    singular = {
        "queues": "queue",
        "channels": "channel",
        "patterns": "pattern",
        "web_bind": "bind",
        "web_allowed_hosts": "allowed_host",
    }
    return "--" + singular.get(field_name, field_name).replace("_", "-")


def env_name(field_name: str) -> str:
    """`block_timeout` -> `TASKD_BLOCK_TIMEOUT`."""
    return ENV_PREFIX + field_name.upper()


def _convert(name: str, raw: Any, source: str) -> Any:
    spec = SPECS[name]
    where = f"{source}={raw!r}"
    if spec.kind == "list":
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: expected {spec.expected}")
        values = tuple(i.strip() for i in items if i.strip())
        if name == "queues" and not values:
            raise ConfigError(f"{where}: expected {spec.expected}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(
                f"{where}: {', '.join(repeated)} given more than once; expected each "
                "name once (a name served twice runs its tasks twice)"
            )
        return values
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected {spec.expected}")
    if spec.kind == "str":
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected {spec.expected}")
        return raw
    number_type: Callable[[Any], Any] = int if spec.kind.startswith("int") else float
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: expected {spec.expected}")
    try:
        value = number_type(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {spec.expected}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: expected {spec.expected}")
    minimum_ok = value >= 0 if spec.kind.endswith("0") else value > 0
    if not minimum_ok:
        raise ConfigError(f"{where}: expected {spec.expected}")
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: file not found; expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path!r}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path!r}: not valid TOML ({exc})") from None
    section = data.get("taskd", data)
    if not isinstance(section, dict):
        raise ConfigError(f"--config {path!r}: [taskd] must be a table")
    return section


def default_worker_id(env: Mapping[str, str]) -> str:
    """`<host>:<supervisor process name>` under supervisord (stable), else `<host>:<pid>`."""
    name = env.get("SUPERVISOR_PROCESS_NAME")
    return f"{socket.gethostname()}:{name or os.getpid()}"


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build validated Settings from the layered sources. `flags` holds only flags given."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_path = config_path or env.get(ENV_PREFIX + "CONFIG") or None
    if config_path:
        for key, raw in _read_toml(config_path).items():
            name = key.replace("-", "_")
            if name == "queue":
                name, raw = "queues", [raw] if isinstance(raw, str) else raw
            if name not in SPECS:
                raise ConfigError(
                    f"--config {config_path!r}: unknown setting {key!r}; "
                    f"expected one of {', '.join(sorted(SPECS))}"
                )
            values[name] = _convert(name, raw, f"{config_path}:{key}")
    for name in SPECS:
        raw_env = env.get(env_name(name))
        if raw_env is not None and raw_env != "":
            values[name] = _convert(name, raw_env, env_name(name))
    for name, raw in flags.items():
        if raw is not None and name in SPECS:
            values[name] = _convert(name, raw, flag_name(name))
    _check_unknown_env(env)
    values["redis_password"] = _secret(values.get("redis_password_file", ""), "redis", env)
    values["sentinel_password"] = _secret(
        values.get("sentinel_password_file", ""), "sentinel", env
    )
    values["web_token"] = env.get(ENV_PREFIX + "WEB_TOKEN", "")
    settings = Settings(**values)
    if not settings.worker_id:
        settings = dataclasses.replace(settings, worker_id=default_worker_id(env))
    return settings.with_derived().validate()


def known_env_names() -> list[str]:
    """Every TASKD_* variable taskd reads."""
    return [env_name(n) for n in SPECS] + [ENV_PREFIX + n for n in EXTRA_ENV]


def _check_unknown_env(env: Mapping[str, str]) -> None:
    """A misspelled TASKD_* variable is an error, not a setting silently left at its default."""
    known = set(known_env_names())
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"environment variable {name}: not a taskd setting{hint} "
                "(taskd --help lists the TASKD_* names)"
            )


def _secret(path: str, which: str, env: Mapping[str, str]) -> str:
    """A password from --<which>-password-file, else TASKD_<WHICH>_PASSWORD, else none."""
    flag = f"--{which}-password-file"
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"{flag}={path!r}: cannot read ({exc.strerror}); "
                "expected a readable file holding the password"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{flag}={path!r}: expected a UTF-8 text file") from None
        if not secret:
            raise ConfigError(f"{flag}={path!r}: the file is empty")
        return secret
    return env.get(f"{ENV_PREFIX}{which.upper()}_PASSWORD", "")


def _check_ranges(s: Settings) -> None:
    """Upper bounds: ConfigError naming the first value out of range.

    Past these, a value crashes deep inside (OverflowError from a socket timeout) or fails as
    EINVAL at connect time, which reads like an outage.
    """
    for name, spec in SPECS.items():
        value = getattr(s, name)
        where = f"{flag_name(name)}={value!r} (env {env_name(name)})"
        if spec.kind.startswith("float") and value > MAX_SECONDS:
            raise ConfigError(f"{where}: expected seconds up to {MAX_SECONDS:.0f} (a year)")
        low, high = INT_RANGES.get(name, (None, None))
        if low is not None and high is not None and not low <= value <= high:
            raise ConfigError(f"{where}: expected a whole number {low}-{high}")


def _validate(s: Settings) -> None:
    _check_ranges(s)
    try:
        redis_url.parse(s.redis_url)
    except redis_url.RedisUrlError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(s, name)
        if path and not os.path.isfile(path):
            raise ConfigError(
                f"{flag_name(name)}={path!r}: no such file; expected {SPECS[name].expected}"
            )
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError(
            "--tls-cert-file and --tls-key-file: expected both (mutual TLS) or neither"
        )
    if s.socket_timeout <= s.block_timeout:
        raise ConfigError(
            f"--socket-timeout={s.socket_timeout:g}: expected more than the block timeout "
            f"({s.block_timeout:g} s), or a blocking claim would be cut off by its own socket"
        )
    if s.heartbeat_ttl <= s.block_timeout:
        raise ConfigError(
            f"--heartbeat-ttl={s.heartbeat_ttl:g}: expected more than the block timeout "
            f"({s.block_timeout:g} s), or idle workers would look dead"
        )
    if s.stall_timeout <= s.socket_timeout:
        raise ConfigError(
            f"--stall-timeout={s.stall_timeout:g}: expected more than the socket timeout "
            f"({s.socket_timeout:g} s = block timeout + margin), or an idle claim looks stalled"
        )
    if s.backoff_cap < s.backoff_base:
        raise ConfigError(
            f"--backoff-cap={s.backoff_cap:g}: "
            f"expected at least --backoff-base ({s.backoff_base:g})"
        )
    if s.retry_cap < s.retry_base:
        raise ConfigError(
            f"--retry-cap={s.retry_cap:g}: expected at least --retry-base ({s.retry_base:g})"
        )
    if s.metrics_port > 65535:
        raise ConfigError(
            f"--metrics-port={s.metrics_port}: expected {SPECS['metrics_port'].expected}"
        )
    if s.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level={s.log_level!r}: expected {SPECS['log_level'].expected}")
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format={s.log_format!r}: expected {SPECS['log_format'].expected}")
    if s.handler and (s.handler.count(":") != 1 or not all(s.handler.split(":"))):
        raise ConfigError(f"--handler={s.handler!r}: expected {SPECS['handler'].expected}")
    if any(c.isspace() for c in s.worker_id):
        raise ConfigError(f"--worker-id={s.worker_id!r}: expected {SPECS['worker_id'].expected}")
    host, sep, port = s.web_bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--bind={s.web_bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    for queue in s.queues:
        if any(c.isspace() for c in queue):
            raise ConfigError(f"--queue={queue!r}: expected a queue name without spaces")
        for other in s.queues:
            if other != queue and QueueKeys(other).owns(queue):
                raise ConfigError(
                    f"--queue={queue!r}: that is a key of queue {other!r} (its dead letters, "
                    "retries or processing lists); expected a queue name that is not another "
                    "queue's key"
                )
