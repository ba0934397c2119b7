"""Parsing and redaction of Redis URLs, pure so config validation and logs can share it.

Accepted forms::

    redis://[[user]:password@]host[:port][/db]
    rediss://...                      (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master_name[/db]
        [?sentinel_password=P[&sentinel_username=U]]
    rediss+sentinel://...             (TLS to sentinels and master)
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/]
    rediss+cluster://...              (TLS to every node)

A cluster URL names some of the cluster's nodes (any one that answers is enough: the client
learns the others from it); a cluster has database 0 only.

The user and password before ``@`` are those of the Redis master; the sentinels' own
credentials (their ``requirepass`` / ACL user) go in the ``sentinel_password`` and
``sentinel_username`` query parameters (or --sentinel-password-file /
TASKD_SENTINEL_PASSWORD, which win over the URL).

Passwords: the userinfo is everything between ``://`` and the LAST ``@`` (for ``unix://``,
the last ``@`` followed by ``/``), so a raw ``/``, ``@``, ``:``, ``?`` or ``#`` in a password
is taken as part of it; ``%XX`` sequences are decoded, so a literal ``%`` must be written
``%25`` (percent-encoding the whole password always works). Query values are decoded the same
way; a query value runs to the next ``&db=``, ``&sentinel_password=`` or
``&sentinel_username=``, so a raw ``&`` in it is kept. Master names containing ``@`` must be written
``%40``. No error message ever shows any part of the userinfo or of a password parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
EXPECTED = (
    "expected redis://[user:password@]host:port/db, rediss://..., unix:///path.sock[?db=N], "
    "redis+sentinel://[user:password@]host:port[,host:port]/master[/db]"
    "[?sentinel_password=P&sentinel_username=U] "
    "or redis+cluster://[user:password@]host:port[,host:port]"
)
QUERY_KEYS = {
    "redis": ("db",),
    "rediss": ("db",),
    "unix": ("db",),
    "redis+sentinel": ("db", "sentinel_password", "sentinel_username"),
    "rediss+sentinel": ("db", "sentinel_password", "sentinel_username"),
    "redis+cluster": ("db",),
    "rediss+cluster": ("db",),
}


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
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")

    @property
    def cluster(self) -> bool:
        return self.scheme.endswith("+cluster")


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Query parameters whose value is a secret (hidden) or may hold a raw "@" (not a userinfo end).
# A query value runs to the next "&name=" of a known parameter, so a raw "&" in a password
# stays in it (and stays hidden).
_NEXT_PARAM = r"&(?=(?:db|sentinel_password|sentinel_username)=)"
_NAME = re.compile(r"[a-z_]{1,40}", re.IGNORECASE)
_SHOWN_PARAMS = ("db", "sentinel_username")  # every other query value is shown as ***
_AT_PARAM = re.compile(r"[?&]sentinel_(?:password|username)=", re.IGNORECASE)


def _userinfo_end(rest: str, unix: bool, skip_params: bool) -> int:
    """Index of the ``@`` that ends the userinfo in `rest` (after ``://``), or -1.

    The last ``@`` wins (for unix://, the last one followed by ``/``, if any: a socket path
    may hold an ``@``). With `skip_params`, an ``@`` inside a sentinel credential parameter's value
    is not a userinfo end (that is how `parse` reads the URL).
    """
    if unix and rest.startswith("/"):  # unix:///path: no userinfo (it cannot start with /)
        return -1
    end = len(rest)
    while (at := rest.rfind("@", 0, end)) >= 0:
        end = at
        if unix and not rest.startswith("/", at + 1) and "@/" in rest[:at]:
            continue
        if skip_params and _AT_PARAM.search(rest, 0, at):
            continue
        return at
    return -1


def _redact_one(url: str) -> str:
    """`url` (starting with a scheme) with its userinfo password and query values hidden.

    When the two readings of the userinfo differ (last ``@`` overall, and `parse`'s, which
    skips an ``@`` inside a sentinel credential parameter), everything is hidden: no reading
    of an odd URL may show part of a password.
    """
    scheme, _, rest = url.partition("://")
    unix = scheme.lower() == "unix"
    at = _userinfo_end(rest, unix, False)
    if at != _userinfo_end(rest, unix, True):
        return f"{scheme}://***"
    head = ""
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        head = f"{user}:***@"
    return f"{scheme}://{head}{_hide_query(rest)}"


def _hide_query(rest: str) -> str:
    """The query with only db= and sentinel_username= values shown (names if plain words)."""
    path, question, query = rest.partition("?")
    if not question:
        return rest
    shown = []
    for item in re.split(_NEXT_PARAM, query, flags=re.IGNORECASE):
        key, equals, _value = item.partition("=")
        if not equals or not _NAME.fullmatch(key):
            shown.append("***")
        elif key.lower() in _SHOWN_PARAMS:
            shown.append(item)
        else:
            shown.append(f"{key}=***")
    return f"{path}?{'&'.join(shown)}"


def redact(text: str) -> str:
    """Return `text` with the password of the URL in it replaced by ``***`` (safe to log).

    `text` may be a URL or a message with one in it (everything after the URL's start is
    taken as part of the URL, so a message tail may be hidden too, never shown too much).
    """
    match = _SCHEME.search(text)
    if match is None:
        return text
    return text[: match.start()] + _redact_one(text[match.start() :])


def _shown(url: str) -> str:
    """`url` as an error may show it: redacted, and where it is not even a URL (a typo in
    `://`), everything up to its last `@` hidden, since that may well be a password."""
    if _SCHEME.search(url) is None and "@" in url:
        return "***@" + url.rpartition("@")[2]
    return redact(url)


def _fail(url: str, problem: str) -> RedisUrlError:
    return RedisUrlError(f"redis url {_shown(url)!r}: {problem}")


def _port(text: str, url: str) -> int:
    if not text.isdigit():
        raise _fail(url, f"port {text!r} is not a number") from None
    port = int(text)
    if not 0 < port < 65536:
        raise _fail(url, f"port {port} is out of range 1-65535")
    return port


def _db(text: str, url: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise _fail(url, f"database {text!r} is not a number (expected /0 ... /15)")
    return int(text)


def _hosts(hostpart: str, url: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for item in hostpart.split(","):
        if not item:
            raise _fail(url, f"no host; {EXPECTED}")
        if item.startswith("["):  # IPv6 literal
            host, closed, rest = item[1:].partition("]")
            if not closed:
                raise _fail(url, f"an IPv6 address without its closing ']'; {EXPECTED}")
            port = _port(rest[1:], url) if rest.startswith(":") else default_port
        elif ":" in item:
            host, _, port_text = item.rpartition(":")
            port = _port(port_text, url)
        else:
            host, port = item, default_port
        if not host:
            raise _fail(url, f"no host; {EXPECTED}")
        hosts.append((unquote(host), port))
    return tuple(hosts)


def _credentials(userinfo: str | None) -> tuple[str | None, str | None]:
    """(username, password) of the userinfo, decoded; a lone word is the password."""
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis://secret@host: the old AUTH <password> form
        return None, unquote(user)
    return (unquote(user) or None), unquote(password)


def _query(text: str, scheme: str, url: str) -> dict[str, str]:
    """The query parameters; unknown or repeated names are errors (named, values never shown)."""
    params: dict[str, str] = {}
    if not text:
        return params
    allowed = QUERY_KEYS[scheme]
    for item in re.split(_NEXT_PARAM, text, flags=re.IGNORECASE):
        key, equals, value = item.partition("=")
        key = key.lower()
        if not equals:  # not shown: it could be a misplaced secret
            raise _fail(url, f"a query parameter without a value (expected name=value); {EXPECTED}")
        if key not in allowed:
            raise _fail(
                url,
                f"unknown parameter {key[:40]!r} (expected {', '.join(allowed)}); {EXPECTED}",
            )
        if key in params:
            raise _fail(url, f"parameter {key!r} given twice")
        params[key] = unquote(value)
    return params


def parse(url: str) -> RedisTarget:
    """Parse `url` or raise RedisUrlError with one line that names it (password hidden)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError(f"redis url {_shown(url)!r} is not a URL; {EXPECTED}")
    if scheme not in SCHEMES:
        raise _fail(url, f"unknown scheme {scheme!r}; {EXPECTED}")
    at = _userinfo_end(rest, scheme == "unix", scheme.endswith("+sentinel"))
    userinfo = rest[:at] if at >= 0 else None
    rest = rest[at + 1 :] if at >= 0 else rest
    username, password = _credentials(userinfo)
    rest, _, _fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    query = _query(query_text, scheme, url)
    if scheme == "unix":
        if not rest.startswith("/") or rest == "/":
            raise _fail(url, f"no socket path; {EXPECTED}")
        db = _db(query.get("db", ""), url)
        return RedisTarget(scheme, path=unquote(rest), db=db, username=username, password=password)
    hostpart, slash, path = rest.partition("/")
    if scheme.endswith("+sentinel"):
        segments = [s for s in path.split("/") if s]
        if not segments:
            raise _fail(url, f"no master name; {EXPECTED}")
        if len(segments) > 2:
            raise _fail(url, f"too many path parts; {EXPECTED}")
        db = _db(segments[1] if len(segments) == 2 else query.get("db", ""), url)
        return RedisTarget(
            scheme,
            hosts=_hosts(hostpart, url, 26379),
            db=db,
            username=username,
            password=password,
            master_name=unquote(segments[0]),
            sentinel_username=query.get("sentinel_username") or None,
            sentinel_password=query.get("sentinel_password") or None,
        )
    path = path.strip("/")
    db = _db(path if path else query.get("db", ""), url)
    hosts = _hosts(hostpart, url, 6379)
    if scheme.endswith("+cluster"):
        if db != 0:
            raise _fail(url, f"database {db}: a Redis Cluster has database 0 only")
        return RedisTarget(scheme, hosts=hosts, username=username, password=password)
    if len(hosts) != 1:
        raise _fail(url, f"exactly one host expected; {EXPECTED}")
    return RedisTarget(scheme, hosts=hosts, db=db, username=username, password=password)
