"""No output ever shows a password, whatever characters it holds.

The passwords here hold every URL-special character (``:/?#[]@!$&'()*+,;=%`` and a space)
between numbered fragments (``Zq0``...), so a partial leak (``***@ss``) is caught as surely as a
whole one: every output is searched for any fragment. A real redis-server requires the
password; a real consumer runs with it in its URL (raw, as an operator would paste it), and
its logs, /healthz, /readyz and /metrics are searched, as are the one-line errors of
`taskd consume` and `taskd status` with a wrong password, an unreachable server and a URL that
cannot be parsed.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon import redis_url
from daemon.config import ConfigError, load

HANDLER = ("--handler", "handlers_for_tests:record")
SPECIALS = ":/?#[]@!$&'()*+,;=% "


def secret(prefix: str) -> str:
    """`<prefix>0:<prefix>1/<prefix>2?...`: a fragment before and after every special."""
    return "".join(f"{prefix}{i}{c}" for i, c in enumerate(SPECIALS)) + f"{prefix}{len(SPECIALS)}"


GOOD, WRONG = secret("Zq"), secret("Wz")
FRAGMENT = re.compile(r"(Zq|Wz)\d")


def assert_hidden(text: str, where: str) -> None:
    leak = FRAGMENT.search(text)
    assert leak is None, f"password fragment {leak.group()!r} in {where}: {text[:2000]}"


def forms(password: str) -> list[str]:
    """The password as pasted raw and percent-encoded."""
    return [password, quote(password, safe="")]


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "locked")
    server.workdir.mkdir()
    server.start()
    server.client().config_set("requirepass", GOOD)
    yield server
    server.stop()


# -- parse and redact, pure ------------------------------------------------------------------


@pytest.mark.parametrize("char", list(SPECIALS))
def test_every_special_character_in_a_password_parses_and_is_hidden(char: str) -> None:
    password = f"Zq1{char}Zq2"
    for form in forms(password):
        for url, host in (
            (f"redis://user:{form}@h:7/2", ("h", 7)),
            (f"redis+sentinel://:{form}@s1:1,s2:2/mymaster/1", ("s1", 1)),
        ):
            target = redis_url.parse(url)
            assert target.password == password, url
            assert target.hosts[0] == host
            assert_hidden(redis_url.redact(url), "redact")
        assert_hidden(redis_url.redact(f"unix://:{form}@/run/redis.sock?db=1"), "redact unix")
        target = redis_url.parse(f"unix://:{quote(password, safe='')}@/run/r@1/redis.sock?db=1")
        assert target.password == password and target.path == "/run/r@1/redis.sock"


def test_a_password_holding_at_signs_is_parsed_whole_and_hidden() -> None:
    assert redis_url.redact("redis://user:p@ss@host:1/0") == "redis://user:***@host:1/0"
    target = redis_url.parse("redis://user:p@ss@host:1/0")
    assert (target.username, target.password, target.hosts) == ("user", "p@ss", (("host", 1),))
    assert redis_url.redact("redis://:Zm9v/YmFy+cw==@host") == "redis://:***@host"
    assert redis_url.parse("redis://:Zm9v/YmFy+cw==@host").password == "Zm9v/YmFy+cw=="


def test_sentinel_password_parameter_is_parsed_and_hidden() -> None:
    url = (
        f"redis+sentinel://:{quote(GOOD, safe='')}@s1:26379/mymaster/0"
        f"?sentinel_password={quote(WRONG, safe='')}&sentinel_username=watcher"
    )
    target = redis_url.parse(url)
    assert (target.password, target.sentinel_password) == (GOOD, WRONG)
    assert target.sentinel_username == "watcher"
    shown = redis_url.redact(url)
    assert_hidden(shown, "redact")
    assert "sentinel_password=***" in shown and "s1:26379/mymaster/0" in shown
    raw = f"redis+sentinel://s1/mymaster?sentinel_password={WRONG}"  # raw @ & # ? inside
    assert_hidden(redis_url.redact(raw), "redact raw")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{GOOD}@h:bad/0",
        f"redis://:{GOOD}@h:1/x",
        f"redis://:{GOOD}@h:1/0?nosuch=1",
        f"redis://h:1/0?password={quote(GOOD, safe='')}",
        f"redis://h:1/0?{quote(GOOD, safe='')}",
        f"redis+sentinel://:{GOOD}@h:1/",
        f"unix://:{GOOD}@relative.sock",
        f"redis://:{GOOD}@",
    ],
)
def test_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"redis_url": url}, env={})
    assert_hidden(str(info.value), "the error")


# -- a real consumer and the real CLI --------------------------------------------------------


def get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as refused:  # 503 has a body too
        return str(refused.read().decode())


def test_no_output_of_a_running_consumer_shows_the_password(
    locked: RedisServer, taskd: DaemonFactory
) -> None:
    url = f"redis://:{GOOD}@127.0.0.1:{locked.port}/0"  # raw, as pasted
    port = free_port()
    daemon = taskd.start(  # the URL from the environment: nothing to see in ps either
        "consume",
        "--queue",
        "jobs",
        *HANDLER,
        "--block-timeout",
        "0.5",
        "--backoff-cap",
        "0.5",
        "--metrics-port",
        str(port),
        "--log-level",
        "debug",
        env=taskd.env(TASKD_REDIS_URL=url),
    )
    client = locked.client(password=GOOD)
    client.lpush("jobs", "one")
    wait_until(lambda: "one" in taskd.done_bodies(), 15, "the task done with the password")
    started = daemon.wait_for_event("consumer.started", 5)[0]
    assert started["redis"] == f"redis://:***@127.0.0.1:{locked.port}/0"
    pages = {path: get(port, path) for path in ("/healthz", "/readyz", "/metrics")}
    assert "taskd_" in pages["/metrics"]
    client.client_kill_filter(_type="normal", skipme=True)  # every consumer connection drops
    daemon.wait_for_event("redis.disconnected", 10)
    daemon.wait_for_event("redis.reconnected", 10)
    locked.stop()  # and an outage: refused connects
    wait_until(lambda: len(daemon.events("redis.disconnected")) == 2, 10, "the outage logged")
    pages["/readyz down"] = get(port, "/readyz")
    for path, page in pages.items():
        assert_hidden(page, path)
    assert_hidden(daemon.log_path.read_text(), "the consumer's log")
    assert_hidden(Path(f"/proc/{daemon.pid}/cmdline").read_bytes().decode(), "cmdline")


def test_no_cli_error_shows_the_password(locked: RedisServer, taskd: DaemonFactory) -> None:
    outputs: dict[str, str] = {}
    for n, form in enumerate(forms(WRONG)):
        url = f"redis://:{form}@127.0.0.1:{locked.port}/0"
        for verb in (("consume", "--queue", "jobs", *HANDLER), ("status", "--queue", "jobs")):
            done = taskd.run(verb[0], "--redis-url", url, *verb[1:], timeout=20)
            assert done.returncode == 78, done.stderr
            lines = done.stderr.decode().strip().splitlines()
            assert len(lines) == 1 and "expected a valid username/password" in lines[0]
            outputs[f"{verb[0]} wrong {n}"] = (done.stdout + done.stderr).decode()
        closed = f"redis://:{form}@127.0.0.1:{free_port()}/0"
        done = taskd.run("status", "--redis-url", closed, timeout=20)
        assert done.returncode == 69
        outputs[f"status unreachable {n}"] = (done.stdout + done.stderr).decode()
        sentinel = f"redis+sentinel://:{form}@127.0.0.1:{free_port()}/m/0?sentinel_password={form}"
        done = taskd.run("status", "--redis-url", sentinel, "--connect-timeout", "1", timeout=20)
        assert done.returncode in (69, 78)
        outputs[f"status sentinel {n}"] = (done.stdout + done.stderr).decode()
        bad = f"redis://:{form}@127.0.0.1:nope/0"
        done = taskd.run("status", "--redis-url", bad, timeout=20)
        assert done.returncode == 78
        outputs[f"status bad url {n}"] = (done.stdout + done.stderr).decode()
    for where, text in outputs.items():
        assert_hidden(text, where)
