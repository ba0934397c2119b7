"""Settings: defaults < ``--config FILE`` (TOML) < ``TASKD_*`` environment < command-line flags.

This is the only module that reads the environment. The sources are generated from the
declarations in daemon/settings.py: every setting has a flag (``--block-timeout``), an
environment twin (``TASKD_BLOCK_TIMEOUT``) and a TOML key (``block_timeout``); list settings
take several flags or a comma-separated environment value. Bad values raise ConfigError with
one line that names the value, where it came from, and what was expected; the CLI turns that
into exit code 78.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from daemon import settings_spec
from daemon.settings import LOG_FORMATS, LOG_LEVELS, SOCKET_MARGIN, Settings
from daemon.settings_spec import (
    DERIVED,
    ENV_PREFIX,
    MAX_SECONDS,
    ConfigError,
    Names,
    Setting,
    env_name,
    rows,
    secrets,
)
from daemon.worker_id import local_default_worker_id

__all__ = [
    "DECLARED",
    "DERIVED",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_SECONDS",
    "SOCKET_MARGIN",
    "ConfigError",
    "Settings",
    "env_name",
    "flag_name",
    "known_env_names",
    "load",
]

DECLARED: dict[str, Setting] = rows(Settings)  # every setting with a flag, env twin, TOML key
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the config file's path, when --config is not given


def flag_name(name: str) -> str:
    """`block_timeout` -> `--block-timeout` (list settings use the singular: `--queue`)."""
    return settings_spec.flag_name(name, DECLARED[name])


def _convert(name: str, raw: Any, source: str) -> Any:
    """The value of setting `name` from `raw`, or ConfigError naming `source`."""
    row = DECLARED[name]
    try:
        value = row.kind.parse(raw)
    except ValueError as exc:
        reason = str(exc) or f"expected {row.kind.expected}"
        raise ConfigError(f"{source}={raw!r}: {reason}") from None
    if row.derive is not None and value == 0:  # documented in --help: 0 = the derived default
        return DERIVED
    return value


def _toml_names() -> dict[str, str]:
    """TOML key -> setting: the field name, and a list setting's flag name (`queue`)."""
    names = {name: name for name in DECLARED}
    names.update({row.flag: name for name, row in DECLARED.items() if row.flag})
    return names


def from_toml(path: str) -> dict[str, Any]:
    """The settings in a TOML file (its [taskd] table, or the top level)."""
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
    names = _toml_names()
    values: dict[str, Any] = {}
    for key, raw in section.items():
        name = names.get(key.replace("-", "_"))
        if name is None:
            raise ConfigError(
                f"--config {path!r}: unknown setting {key!r}; "
                f"expected one of {', '.join(sorted(DECLARED))}"
            )
        if isinstance(DECLARED[name].kind, Names) and key != name and isinstance(raw, str):
            raw = [raw]  # `queue = "q"`: one name, commas and all
        values[name] = _convert(name, raw, f"{path}:{key}")
    return values


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as TASKD_* variables (an empty one counts as not given)."""
    values: dict[str, Any] = {}
    for name in DECLARED:
        raw = env.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = _convert(name, raw, env_name(name))
    return values


def from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The settings given as flags: `flags` maps setting names to the flags' raw values."""
    return {
        name: _convert(name, raw, flag_name(name))
        for name, raw in flags.items()
        if raw is not None and name in DECLARED
    }


def default_worker_id(env: Mapping[str, str], name: str = "") -> str:
    """`<host>:<machine tag>:<name>`: `name` (--worker-name), else the supervisord process
    name (both stable across restarts), else the pid; unique across hosts (worker_id.py)."""
    return local_default_worker_id(name or env.get("SUPERVISOR_PROCESS_NAME", ""))


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build validated Settings from the layered sources. `flags` holds only flags given."""
    env = os.environ if env is None else env
    config_path = config_path or env.get(CONFIG_ENV) or None
    values = from_toml(config_path) if config_path else {}
    values.update(from_env(env))
    values.update(from_flags(flags))
    _check_unknown_env(env)
    for name, row in secrets(Settings).items():
        values[name] = _secret(name, values.get(row.file_setting, ""), row.file_setting, env)
    if not values.get("worker_id"):
        values["worker_id"] = default_worker_id(env, values.get("worker_name", ""))
    return Settings(**values).validate()


def known_env_names() -> list[str]:
    """Every TASKD_* variable taskd reads."""
    return [env_name(n) for n in [*DECLARED, *secrets(Settings)]] + [CONFIG_ENV]


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


def _secret(name: str, path: str, file_setting: str, env: Mapping[str, str]) -> str:
    """A secret from the file its file setting names, else from its TASKD_* variable."""
    if path:
        flag = flag_name(file_setting)
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
    return env.get(env_name(name), "")
