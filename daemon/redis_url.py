"""Parsing and redaction of Redis URLs, pure so config validation and logs can share it.

Accepted forms::

    redis://[[user]:password@]host[:port][/db]
    rediss://...                      (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master_name[/db]
    rediss+sentinel://...             (TLS to sentinels and master)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
EXPECTED = (
    "expected redis://host:port/db, rediss://..., unix:///path.sock "
    "or redis+sentinel://host:port[,host:port]/master[/db]"
)


class RedisUrlError(ValueError):
    """The URL cannot be used; the message names the (redacted) value and what was expected."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master_name: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")


_CREDENTIALS = re.compile(r"(?P<scheme>[a-z+]+://)(?P<userinfo>[^@/]*)@")


def redact(url: str) -> str:
    """Return `url` with any password replaced by ``***`` (safe to log)."""

    def _hide(match: re.Match[str]) -> str:
        userinfo = match.group("userinfo")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        return f"{match.group('scheme')}{user}:***@"

    return _CREDENTIALS.sub(_hide, url, count=1)


def _port(text: str, url: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise RedisUrlError(f"redis url {redact(url)!r}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise RedisUrlError(f"redis url {redact(url)!r}: port {port} is out of range 1-65535")
    return port


def _db(text: str, url: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise RedisUrlError(
            f"redis url {redact(url)!r}: database {text!r} is not a number (expected /0 ... /15)"
        )
    return int(text)


def _hosts(netloc: str, url: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hostpart = netloc.rsplit("@", 1)[-1]
    hosts: list[tuple[str, int]] = []
    for item in hostpart.split(","):
        if not item:
            raise RedisUrlError(f"redis url {redact(url)!r}: no host; {EXPECTED}")
        if item.startswith("["):  # IPv6 literal
            host, _, rest = item[1:].partition("]")
            port = _port(rest[1:], url) if rest.startswith(":") else default_port
        elif ":" in item:
            host, _, port_text = item.rpartition(":")
            port = _port(port_text, url)
        else:
            host, port = item, default_port
        hosts.append((host, port))
    return tuple(hosts)


def parse(url: str) -> RedisTarget:
    """Parse `url` or raise RedisUrlError with one line that names it (password hidden)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise RedisUrlError(f"redis url {redact(url)!r} is not a URL; {EXPECTED}")
    if scheme not in SCHEMES:
        raise RedisUrlError(f"redis url {redact(url)!r}: unknown scheme {scheme!r}; {EXPECTED}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RedisUrlError(
            f"redis url {redact(url)!r} cannot be parsed ({exc}); {EXPECTED}"
        ) from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    if scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"redis url {redact(url)!r}: no socket path; {EXPECTED}")
        db = _db(query.get("db", [""])[0], url)
        return RedisTarget(scheme, path=parts.path, db=db, username=username, password=password)
    if scheme.endswith("+sentinel"):
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise RedisUrlError(f"redis url {redact(url)!r}: no master name; {EXPECTED}")
        if len(segments) > 2:
            raise RedisUrlError(f"redis url {redact(url)!r}: too many path parts; {EXPECTED}")
        db = _db(segments[1] if len(segments) == 2 else query.get("db", [""])[0], url)
        hosts = _hosts(parts.netloc, url, 26379)
        return RedisTarget(
            scheme,
            hosts=hosts,
            db=db,
            username=username,
            password=password,
            master_name=unquote(segments[0]),
        )
    path = parts.path.strip("/")
    db = _db(path if path else query.get("db", [""])[0], url)
    hosts = _hosts(parts.netloc, url, 6379)
    if len(hosts) != 1:
        raise RedisUrlError(f"redis url {redact(url)!r}: exactly one host expected; {EXPECTED}")
    return RedisTarget(scheme, hosts=hosts, db=db, username=username, password=password)
