"""The vocabulary a setting is declared with: its kind, its verbs, its help, how it is derived.

Each field of ``Settings`` (daemon/settings.py) is declared once with :func:`setting`,
:func:`derived` or :func:`secret`; the command line, the ``TASKD_*`` environment, the TOML
file and the validation are all generated from those declarations (daemon/config.py,
daemon/cli.py). A kind parses a raw value (a flag's text, an environment string, a TOML value)
and names what is wrong with a final one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

T = TypeVar("T")
ENV_PREFIX: Final = "TASKD_"
MAX_SECONDS: Final = 365 * 86400.0  # longer than any useful deadline; socket and time_t safe
METADATA_KEY: Final = "taskd"

# Verbs: the ones that talk to Redis, the long-running loops and the producers.
CONSUME, SUBSCRIBE, ENQUEUE, PUBLISH, STATUS, DEAD, WEB = (
    "consume",
    "subscribe",
    "enqueue",
    "publish",
    "status",
    "dead",
    "web",
)
CONNECTED: Final = (CONSUME, ENQUEUE, SUBSCRIBE, PUBLISH, STATUS, DEAD, WEB)
LOOPS: Final = (CONSUME, SUBSCRIBE)
PRODUCERS: Final = (ENQUEUE, PUBLISH, WEB)

# The value of a derived setting not given (yet): __post_init__ replaces it. NaN, because no
# given value can be NaN (every source refuses it) and it keeps the field a float.
DERIVED: Final = math.nan


class ConfigError(Exception):
    """A configuration value is unusable; str(error) is the one line to show the user."""


@dataclass(frozen=True)
class Kind:
    """How a setting's value is read and checked. `parse` raises ValueError on a bad raw value."""

    expected: str  # what a good value looks like, for "expected ..." in error lines
    example: str = "x"  # a raw value that parses (the declaration test uses it)
    names_env = False  # whether a problem with the final value names the environment twin

    def parse(self, raw: Any) -> Any:
        """The value of `raw` from a flag, the environment or TOML."""
        if not isinstance(raw, str):
            raise ValueError
        return raw

    def problem(self, value: Any) -> str | None:
        """What is wrong with a final value ("expected ..."), or None."""
        return None


@dataclass(frozen=True)
class Text(Kind):
    """A string; `valid`, when given, decides whether a non-empty one is usable."""

    valid: Callable[[str], bool] | None = None
    invalid: str = ""  # what the error says is expected when `valid` refuses (default: expected)

    def problem(self, value: Any) -> str | None:
        if value and self.valid is not None and not self.valid(value):
            return f"expected {self.invalid or self.expected}"
        return None


@dataclass(frozen=True)
class File(Kind):
    """A path that must name an existing file when given."""

    def problem(self, value: Any) -> str | None:
        if value and not os.path.isfile(value):
            return f"no such file; expected {self.expected}"
        return None


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few words (compared without case when `fold_case`)."""

    choices: tuple[str, ...] = ()
    fold_case: bool = False

    def problem(self, value: Any) -> str | None:
        word = value.lower() if self.fold_case else value
        return None if word in self.choices else f"expected {self.expected}"


@dataclass(frozen=True)
class Flag(Kind):
    """True or false; on the command line a flag without a value turns it on."""

    expected: str = "true or false"
    example: str = "true"

    def parse(self, raw: Any) -> Any:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError


@dataclass(frozen=True)
class Names(Kind):
    """Several names: a flag given several times, a comma-separated string or a TOML list."""

    required: bool = False  # at least one name
    example: str = "a,b"

    def parse(self, raw: Any) -> Any:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError
        values = tuple(i.strip() for i in items if i.strip())
        if self.required and not values:
            raise ValueError
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(
                f"{', '.join(repeated)} given more than once; expected each "
                "name once (a name served twice runs its tasks twice)"
            )
        return values


@dataclass(frozen=True)
class Seconds(Kind):
    """A finite number of seconds, > 0 (>= 0 with `zero`), at most MAX_SECONDS."""

    expected: str = "seconds > 0"
    zero: bool = False
    example: str = "7.5"
    names_env = True

    def parse(self, raw: Any) -> Any:
        value = _number(float, raw)
        if not (value >= 0 if self.zero else value > 0):
            raise ValueError
        return value

    def problem(self, value: Any) -> str | None:
        if value > MAX_SECONDS:  # past it a socket timeout raises OverflowError deep inside
            return f"expected seconds up to {MAX_SECONDS:.0f} (a year)"
        return None


@dataclass(frozen=True)
class Whole(Kind):
    """A whole number low..high; `low` (0 or 1) is checked when parsing, `high` on the value."""

    low: int = 1
    high: int = 1_000_000
    in_range: str = ""  # what an out-of-range error says is expected (default: low-high)
    example: str = "2"
    names_env = True

    def parse(self, raw: Any) -> Any:
        value = _number(int, raw)
        if value < self.low:
            raise ValueError
        return value

    def problem(self, value: Any) -> str | None:
        if self.low <= value <= self.high:
            return None
        return f"expected {self.in_range or f'a whole number {self.low}-{self.high}'}"


def _number(kind: Callable[[Any], Any], raw: Any) -> Any:
    if isinstance(raw, bool):
        raise ValueError
    try:
        value = kind(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError from None
    if value != value or value in (math.inf, -math.inf):
        raise ValueError
    return value


@dataclass(frozen=True)
class Setting:
    """One declared setting: every source and check of it is generated from this."""

    kind: Kind
    help: str
    verbs: tuple[str, ...]
    flag: str = ""  # the flag without dashes when not the field name (list settings: singular)
    verb_help: Mapping[str, str] = dataclasses.field(default_factory=dict)
    derive: Callable[[Any], Any] | None = None  # value from the other settings when not given
    derived_from: str = ""  # the derivation in words, for --help
    metavar: str = ""  # the flag's value in --help (default: the last word of the name)

    def help_for(self, verb: str) -> str:
        """The help text of this setting's flag on `verb`."""
        return self.verb_help.get(verb, self.help)


@dataclass(frozen=True)
class Secret:
    """A secret: only from the environment (or from the file another setting names).

    Never a flag (ps shows those) and never a TOML key (configs get copied around).
    """

    help: str
    file_setting: str = ""  # the setting naming a file that holds it, which wins


def setting(
    default: T,
    help: str,
    kind: Kind,
    verbs: Iterable[str],
    *,
    flag: str = "",
    verb_help: Mapping[str, str] | None = None,
    metavar: str = "",
) -> T:
    """Declare a Settings field with its default, help, kind and verbs."""
    row = Setting(kind, help, tuple(verbs), flag, dict(verb_help or {}), metavar=metavar)
    return dataclasses.field(default=default, metadata={METADATA_KEY: row})


def derived(
    derive: Callable[[Any], float], derived_from: str, help: str, kind: Kind, verbs: Iterable[str]
) -> float:
    """Declare a float field whose default is computed from other fields at construction."""
    row = Setting(kind, help, tuple(verbs), derive=derive, derived_from=derived_from)
    return dataclasses.field(default=DERIVED, metadata={METADATA_KEY: row})


def secret(help: str, file_setting: str = "") -> str:
    """Declare a secret field: environment (or file) only, never shown in repr."""
    row = Secret(help, file_setting)
    return dataclasses.field(default="", repr=False, metadata={METADATA_KEY: row})


def is_derived_unset(value: Any) -> bool:
    """Whether `value` is the DERIVED marker (a derived setting nobody gave)."""
    return isinstance(value, float) and math.isnan(value)


def flag_name(name: str, row: Setting) -> str:
    """`block_timeout` -> `--block-timeout`; list settings use the singular (`--queue`)."""
    return "--" + (row.flag or name).replace("_", "-")


def env_name(name: str) -> str:
    """`block_timeout` -> `TASKD_BLOCK_TIMEOUT`."""
    return ENV_PREFIX + name.upper()


@functools.cache
def rows(cls: type) -> dict[str, Setting]:
    """The declared settings of a dataclass, in declaration order, by field name."""
    found = {f.name: f.metadata.get(METADATA_KEY) for f in dataclasses.fields(cls)}
    return {name: row for name, row in found.items() if isinstance(row, Setting)}


@functools.cache
def secrets(cls: type) -> dict[str, Secret]:
    """The declared secrets of a dataclass, by field name."""
    found = {f.name: f.metadata.get(METADATA_KEY) for f in dataclasses.fields(cls)}
    return {name: row for name, row in found.items() if isinstance(row, Secret)}
