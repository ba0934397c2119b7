"""Which requests the web producer answers: the checks that run before a route does.

The routes that change state or show queue contents (/prodcons, /pubsub, /api/*) only answer
requests that name this server in `Host` (a DNS-rebound name does not) and that no browser
sent from another origin (`Origin`, `Sec-Fetch-Site`); with TASKD_WEB_TOKEN set, /api/* also
needs the bearer token. POST /api/tasks needs `Content-Type: application/json`, which a
cross-site HTML form or a `no-cors` fetch cannot send, and a body of at most MAX_BODY_BYTES.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import Request

from daemon.config import Settings

MAX_BODY_BYTES = 1024 * 1024
# Routes that change state or show queue contents: Host, Origin and Sec-Fetch-Site are checked.
GUARDED_ROUTES = ("/prodcons", "/pubsub")
GUARDED_PREFIX = "/api/"
TOKEN_PREFIX = "/api/"  # the routes TASKD_WEB_TOKEN protects
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_NAMES = ("0.0.0.0", "[::]", "::", "*")

_log = structlog.get_logger("taskd.web")


@dataclass(frozen=True)
class Refusal:
    """Why a request is not served: the HTTP status, the JSON document and extra headers."""

    status: int
    doc: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host value; lower case, IPv6 in brackets, port "" when absent."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    if value.count(":") > 1:  # a bare IPv6 address (a bind value, never a valid Host)
        return f"[{value}]", ""
    name, _, port = value.partition(":")
    return name.rstrip("."), port


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServedHosts:
    """The names a `Host` header may give: the bind address (and its loopback aliases), any IP
    literal when bound to all interfaces, and --allowed-host entries ("name" = any port)."""

    names: frozenset[str]  # bind-derived names: with the bind port or no port
    port: str
    any_ip_literal: bool
    extra: frozenset[tuple[str, str]]  # (name, port or "" for any port); ("*", "") = any host

    @classmethod
    def of(cls, bind: str, allowed: tuple[str, ...] = ()) -> ServedHosts:
        """The served names of `taskd web --bind bind --allowed-host ...`."""
        host, _, port = bind.rpartition(":")
        name = _split_host(host)[0]
        names = {name}
        wildcard = name in WILDCARD_NAMES
        if wildcard or name in LOOPBACK_NAMES or name.startswith("127."):
            names.update(LOOPBACK_NAMES)
        if wildcard:  # all interfaces: this machine's own name too
            names.add(socket.gethostname().lower())
        extra = frozenset(_split_host(entry) for entry in allowed)
        return cls(frozenset(names), port, wildcard, extra)

    def refusal(self, host_header: str) -> str:
        """Empty when `host_header` names this server, else why not (the 403 reason)."""
        name, port = _split_host(host_header)
        if not name:
            return "the request has no Host header"
        if name in self.names and port in ("", self.port):
            return ""
        if self.any_ip_literal and _is_ip_literal(name):
            return ""
        if ("*", "") in self.extra or (name, "") in self.extra or (name, port) in self.extra:
            return ""
        return (
            f"Host {host_header!r} is not a name this server answers to (a DNS-rebound name "
            "looks like this); add it with --allowed-host (TASKD_WEB_ALLOWED_HOSTS)"
        )


def origin_refusal(origin: str | None, fetch_site: str | None, host_header: str) -> str:
    """Empty unless a browser sent the request from another origin, else why (the 403 reason).

    Requests without these headers (curl, siege, programs) are not from a browser page.
    `same-site` is refused too: another port of the same host is another origin.
    """
    if fetch_site and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}: the request comes from another site's page"
    if origin is None:
        return ""
    parts = urlsplit(origin.strip().lower())
    default = {"http": "80", "https": "443"}.get(parts.scheme, "")
    try:
        origin_port = str(parts.port) if parts.port is not None else default
    except ValueError:
        origin_port = "?"
    name, port = _split_host(host_header)
    origin_name = _split_host(parts.netloc.rpartition("@")[2])[0]
    if origin_name and origin_name == name and origin_port == (port or default):
        return ""
    return f"Origin {origin!r} does not match Host {host_header!r}: a cross-origin request"


@functools.lru_cache(maxsize=64)
def _listener_hosts(name: str, port: str, allowed: tuple[str, ...]) -> ServedHosts:
    """The served names of a listener at name:port (cached: one per listening socket)."""
    return ServedHosts.of(f"{name}:{port}", allowed)


def listener_refusal(environ: Mapping[str, Any], host_header: str, allowed: tuple[str, ...]) -> str:
    """Like ServedHosts.refusal, for the address the WSGI server says the request came in on.

    gunicorn puts the listening socket's address in SERVER_NAME/SERVER_PORT (an IP literal);
    anything else (a unix socket, where gunicorn copies the Host header there) is no evidence
    and gives a refusal, so only --bind and --allowed-host decide.
    """
    name, port = str(environ.get("SERVER_NAME", "")), str(environ.get("SERVER_PORT", ""))
    if not _is_ip_literal(name) or not port.isdigit():
        return "the WSGI server gave no listening address"
    return _listener_hosts(name, port, allowed).refusal(host_header)


def json_body_refusal(mimetype: str, content_type: str) -> Refusal | None:
    """415 unless the body is declared JSON (`content_type`: the header as sent, for the reason).

    A cross-site form or no-cors fetch can only send text/plain, form or multipart.
    """
    if mimetype == "application/json":
        return None
    return Refusal(
        415, {"error": f"expected Content-Type: application/json, got {content_type or 'none'!r}"}
    )


def too_large_doc() -> dict[str, Any]:
    """The JSON document of a 413 (a body over MAX_BODY_BYTES)."""
    return {"error": "request body too large", "limit_bytes": MAX_BODY_BYTES}


class RequestGuard:
    """The checks every request passes before its route runs, in order: same origin, token.

    With `trust_listener` (the app served by a WSGI server taskd did not start), a Host that
    names the address the request arrived on is served too: the server's `-b` is not
    TASKD_WEB_BIND.
    """

    def __init__(self, settings: Settings, *, trust_listener: bool = False) -> None:
        self.hosts = ServedHosts.of(settings.web_bind, settings.web_allowed_hosts)
        self.allowed = settings.web_allowed_hosts
        self.token = settings.web_token
        self.trust_listener = trust_listener

    def check(self, request: Request) -> Refusal | None:
        """The refusal of a Flask `request`, or None when its route may run.

        The origin check comes first: a cross-site request is refused whatever it carries.
        """
        return self.same_origin(request) or self.bearer_token(request)

    def same_origin(self, request: Request) -> Refusal | None:
        """403 for a guarded route asked for under a foreign Host or from another origin."""
        if request.path not in GUARDED_ROUTES and not request.path.startswith(GUARDED_PREFIX):
            return None
        host = request.headers.get("Host", "")
        reason = self.hosts.refusal(host)
        if reason and self.trust_listener:
            with contextlib.suppress(Exception):  # a strange environ: keep the refusal
                if not listener_refusal(request.environ, host, self.allowed):
                    reason = ""
        reason = reason or origin_refusal(
            request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), host
        )
        if not reason:
            return None
        _log.warning("web.request_refused", route=request.path, reason=reason)
        return Refusal(403, {"error": "request refused", "reason": reason})

    def bearer_token(self, request: Request) -> Refusal | None:
        """With TASKD_WEB_TOKEN set, 401 for /api/* without `Authorization: Bearer <token>`.

        Compared in constant time, so response timing does not leak the token.
        """
        if not self.token or not request.path.startswith(TOKEN_PREFIX):
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = self.token.encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return Refusal(
            401,
            {"error": "missing or wrong bearer token"},
            {"WWW-Authenticate": 'Bearer realm="taskd"'},
        )
