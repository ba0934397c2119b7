"""taskd's Lua scripts: one file per operation (``<name>.lua``), loaded with importlib.resources.

Each file opens with a named local for every KEYS and ARGV slot it reads
(``local pending = KEYS[1]``, ``local max_attempts = tonumber(ARGV[1])``), and reads them
nowhere else; a variable tail of ARGV (a list of bodies) is read by computed index only
(``ARGV[i]``, ``#ARGV``, ``unpack(ARGV, ...)``). `script()` parses that header into the counts
a caller must pass, and every call is checked against them (`LuaScript.check`): a header that
drifts from its caller fails at the first call, not in production data.

Redis full (maxmemory, noeviction): the scripts of daemon/reliable.py are also run declared
``#!lua flags=allow-oom`` on Redis >= 7 (`Scripts.use_allow_oom`); the flag line is prepended
at load, the files themselves carry none (Redis 6.2 cannot parse it).
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

ALLOW_OOM = "#!lua flags=allow-oom\n"

_SLOT = re.compile(r"\b(KEYS|ARGV)\[\d")  # a fixed slot: read by a named local only
_NAMED = re.compile(r"^local (\w+) = (?:tonumber\()?(KEYS|ARGV)\[(\d+)\]\)?$")
_VARIADIC = re.compile(r"#ARGV|unpack\(ARGV|ARGV\[(?!\d)")
_INCLUDE = re.compile(r"^--#include (\w+)$", re.M)  # a shared function: _<name>.lua


class ScriptCallError(TypeError):
    """A caller passed a script more or fewer KEYS or ARGV than its header names."""


@dataclass(frozen=True)
class LuaScript:
    """One script's source and what its header says a caller must pass."""

    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    variadic: bool  # ARGV goes on past the named slots (a list of bodies...)

    def check(self, nkeys: int, nargs: int) -> None:
        """Raise ScriptCallError unless `nkeys` KEYS and `nargs` ARGV fit the header."""
        args_fit = nargs >= len(self.args) if self.variadic else nargs == len(self.args)
        if nkeys != len(self.keys) or not args_fit:
            wanted = f"{len(self.args)}{' or more' if self.variadic else ''}"
            raise ScriptCallError(
                f"{self.name}.lua takes {len(self.keys)} KEYS {self.keys} and {wanted} ARGV "
                f"{self.args}; called with {nkeys} KEYS and {nargs} ARGV"
            )


def names() -> list[str]:
    """Every script shipped in this package, by name (the file name without .lua)."""
    files = resources.files(__package__).iterdir()
    return sorted(
        f.name[: -len(".lua")]
        for f in files
        if f.name.endswith(".lua") and not f.name.startswith("_")  # _x.lua: included only
    )


@functools.cache
def script(name: str) -> LuaScript:
    """The script `name` of this package, its header parsed (see `parse`).

    A line ``--#include x`` is replaced by the file ``_x.lua`` (a local function several
    scripts share); included files read no KEYS or ARGV of their own.
    """
    return parse(name, _source(name))


def _source(name: str) -> str:
    text = resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")
    return _INCLUDE.sub(lambda m: _source(f"_{m.group(1)}").rstrip("\n"), text)


def parse(name: str, source: str) -> LuaScript:
    """Read the named KEYS/ARGV locals; ValueError when a fixed slot is read elsewhere."""
    named: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    code = [line.split("--", 1)[0].rstrip() for line in source.splitlines()]  # no comments
    for number, line in enumerate(code, 1):
        if not _SLOT.search(line):
            continue
        match = _NAMED.match(line)
        if match is None:
            raise ValueError(f"{name}.lua:{number}: KEYS/ARGV read outside a named local")
        local, table, index = match.groups()
        if int(index) != len(named[table]) + 1:
            raise ValueError(f"{name}.lua:{number}: {table}[{index}] out of order")
        named[table].append(local)
    variadic = any(_VARIADIC.search(line) for line in code)
    return LuaScript(name, source, tuple(named["KEYS"]), tuple(named["ARGV"]), variadic)


class Scripts:
    """A set of scripts registered on one client, each plain and declared allow-oom."""

    def __init__(self, client: Any, wanted: tuple[str, ...]) -> None:
        self.client = client
        self.lua = {name: script(name) for name in wanted}
        self._forms = {
            name: (
                client.register_script(lua.source),
                client.register_script(ALLOW_OOM + lua.source),
            )
            for name, lua in self.lua.items()
        }
        self._flagged = 0

    def use_allow_oom(self, flagged: bool) -> None:
        """Run the `#!lua flags=allow-oom` forms (Redis >= 7.0; 6.2 cannot parse them)."""
        self._flagged = 1 if flagged else 0

    def preload(self) -> None:
        """SCRIPT LOAD each script of the form in use, in one round trip; best effort.

        Otherwise the first call of each after a start or a Redis restart costs a NOSCRIPT
        round trip. A refused load (NOPERM) leaves that work to the NOSCRIPT fallback.
        """
        from daemon.cluster import is_cluster

        if is_cluster(self.client):  # a cluster: SCRIPT LOAD on every primary
            for forms in self._forms.values():
                with contextlib.suppress(redis.ResponseError):
                    self.client.script_load(forms[self._flagged].script)
            return
        pipe = self.client.pipeline(transaction=False)
        for forms in self._forms.values():
            pipe.script_load(forms[self._flagged].script)
        pipe.execute(raise_on_error=False)

    def run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA `name` (loading it on NOSCRIPT), its KEYS and ARGV counts checked first."""
        self.lua[name].check(len(keys), len(args))
        return self._forms[name][self._flagged](keys=keys, args=args)

    def command(self, name: str, keys: list[Any], args: list[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of `name`, counts checked, for sending along with others."""
        self.lua[name].check(len(keys), len(args))
        return ("EVALSHA", self._forms[name][self._flagged].sha, len(keys), *keys, *args)
