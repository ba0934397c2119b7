"""The web API under a browser's cross-site requests and DNS rebinding: real gunicorn, real HTTP.

A page on another origin (another site, another port of localhost, a DNS-rebound name) can
make the browser send requests to `taskd web`; none of them may push anything.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web_harness import start_taskd_web

from conftest import DaemonFactory, RedisServer
from daemon.keys import DEFAULT_QUEUE
from daemon.web_guard import ServedHosts

Q = DEFAULT_QUEUE
TASK = json.dumps({"queue": Q, "body": "transfer everything"}).encode()


@dataclass
class Web:
    port: int
    redis: RedisServer

    def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str]]:
        """One HTTP request with exactly these headers (Host included); (status, JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name.replace("_", "-"), value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            answer = conn.getresponse()
            raw = answer.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"raw": raw.decode(errors="replace")}
        return answer.status, doc

    def pushed(self) -> int:
        return int(self.redis.client().llen(Q))


def start_web(taskd: DaemonFactory, redis_server: RedisServer, *args: str) -> Web:
    return Web(start_taskd_web(taskd, redis_server.url, *args)[1], redis_server)


@pytest.fixture
def web(taskd: DaemonFactory, redis_server: RedisServer) -> Iterator[Web]:
    yield start_web(taskd, redis_server)


def test_cross_site_text_plain_post_is_refused_415_and_pushes_nothing(web: Web) -> None:
    # What an HTML form or fetch(..., {mode: "no-cors"}) can send without a CORS preflight.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, doc = web.request(
            "POST", "/api/tasks", TASK, Host=f"127.0.0.1:{web.port}", Content_Type=content_type
        )
        assert status == 415, content_type
        assert "application/json" in doc["error"]
    status, doc = web.request("POST", "/api/tasks", TASK, Host=f"127.0.0.1:{web.port}")
    assert status == 415  # no Content-Type at all
    assert web.pushed() == 0


def test_same_origin_json_post_from_every_loopback_name_is_accepted(web: Web) -> None:
    for host in (f"127.0.0.1:{web.port}", f"localhost:{web.port}", f"[::1]:{web.port}"):
        status, doc = web.request(
            "POST",
            "/api/tasks",
            TASK,
            Host=host,
            Origin=f"http://{host}",
            Sec_Fetch_Site="same-origin",
            Content_Type="application/json; charset=utf-8",
        )
        assert status == 202, (host, doc)
    # a program (curl): no Origin, no Sec-Fetch-Site
    status, _ = web.request(
        "POST", "/api/tasks", TASK, Host=f"127.0.0.1:{web.port}", Content_Type="application/json"
    )
    assert status == 202
    assert web.pushed() == 4


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Origin": "http://evil.example"}, "does not match Host"),
        ({"Origin": "http://127.0.0.1:3000"}, "does not match Host"),  # another local port
        ({"Origin": "null"}, "does not match Host"),  # sandboxed iframe, file:// page
        ({"Sec_Fetch_Site": "cross-site"}, "Sec-Fetch-Site"),
        ({"Sec_Fetch_Site": "same-site"}, "Sec-Fetch-Site"),  # localhost:3000 -> :8000
    ],
)
def test_cross_origin_json_post_is_refused_403_with_a_reason(
    web: Web, headers: dict[str, str], reason: str
) -> None:
    given = {name: value.format(port=web.port) for name, value in headers.items()}
    status, doc = web.request(
        "POST",
        "/api/tasks",
        TASK,
        Host=f"127.0.0.1:{web.port}",
        Content_Type="application/json",
        **given,
    )
    assert status == 403
    assert doc["error"] == "request refused"
    assert reason in doc["reason"]
    assert web.pushed() == 0


def test_dns_rebound_host_is_refused_on_every_state_changing_route(web: Web) -> None:
    # After rebinding, the browser talks to 127.0.0.1 but names the attacker's domain, and
    # the page is "same-origin" with that domain, so only Host tells.
    rebound = f"rebind.evil.example:{web.port}"
    for method, path, body in (
        ("POST", "/api/tasks", TASK),
        ("GET", "/prodcons", None),
        ("GET", "/pubsub", None),
        ("GET", "/api/queues", None),
    ):
        status, doc = web.request(
            method,
            path,
            body,
            Host=rebound,
            Origin=f"http://{rebound}",
            Sec_Fetch_Site="same-origin",
            Content_Type="application/json",
        )
        assert status == 403, path
        assert "not a name this server answers to" in doc["reason"]
    status, _ = web.request("GET", "/prodcons", Host=f"localhost:{web.port}:1")
    assert status == 403  # a Host that is no name at all
    assert web.pushed() == 0


def test_seed_get_routes_refuse_cross_site_pages_but_serve_their_own_links(web: Web) -> None:
    host = f"127.0.0.1:{web.port}"
    # <img src="http://127.0.0.1:8000/prodcons"> on another site: a GET with Sec-Fetch-Site.
    for path in ("/prodcons", "/pubsub"):
        status, doc = web.request("GET", path, Host=host, Sec_Fetch_Site="cross-site")
        assert status == 403, path
    assert web.pushed() == 0
    # the seed's own page links to /prodcons (same-origin), typed in the address bar (none),
    # or siege/curl (no header at all): all push
    for fetch_site in ("same-origin", "none"):
        status, _ = web.request("GET", "/prodcons", Host=host, Sec_Fetch_Site=fetch_site)
        assert status == 302
    status, _ = web.request("GET", "/prodcons", Host=host)
    assert status == 302
    assert web.pushed() == 3


def test_probes_and_metrics_answer_whatever_the_host(web: Web) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        status, _ = web.request("GET", path, Host="prometheus-sees-a-service-name:8000")
        assert status == 200, path


def test_allowed_host_adds_a_served_name(taskd: DaemonFactory, redis_server: RedisServer) -> None:
    web = start_web(
        taskd, redis_server, "--allowed-host", "taskd.internal", "--allowed-host", "proxy:443"
    )
    ok = {"Content_Type": "application/json"}
    assert web.request("POST", "/api/tasks", TASK, Host="taskd.internal:9999", **ok)[0] == 202
    assert web.request("POST", "/api/tasks", TASK, Host="proxy:443", **ok)[0] == 202
    assert web.request("POST", "/api/tasks", TASK, Host="proxy:80", **ok)[0] == 403
    status, _ = web.request(
        "POST",
        "/api/tasks",
        TASK,
        Host="proxy:443",
        Origin="https://proxy",  # a TLS-terminating proxy: the browser saw https on 443
        **ok,
    )
    assert status == 202
    assert web.pushed() == 3


def test_served_names_of_a_wildcard_bind_are_ip_literals_loopback_and_the_host_name() -> None:
    # (a pure decision: binding 0.0.0.0 in a test would open the port to the network)
    hosts = ServedHosts.of("0.0.0.0:8000")
    for served in ("10.1.2.3:9000", "[fe80::1]:8000", "localhost:8000", "127.0.0.1"):
        assert hosts.refusal(served) == "", served
    assert hosts.refusal(f"{socket.gethostname()}:8000") == ""
    assert "not a name" in hosts.refusal("rebind.evil.example:8000")
    assert "not a name" in ServedHosts.of("[::1]:8000").refusal("evil:8000")
    assert ServedHosts.of("[::1]:8000").refusal("[::1]:8000") == ""
    assert ServedHosts.of("192.0.2.7:8000").refusal("192.0.2.8:8000") != ""  # not a wildcard
