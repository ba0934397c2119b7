"""Sentinels that require a password (`requirepass` on the sentinels themselves).

A real redis-server (with its own password) is monitored by a real `redis-server --sentinel`
with `requirepass`. With the sentinel password (URL `sentinel_password=`, or
--sentinel-password-file) the consumer finds the master and consumes; with a wrong or missing
one, `taskd consume` stops at once with exit 78 and one line naming the sentinel's refusal,
instead of retrying "no master found" for ever. Also here: the errors of a Sentinel-managed
connection say whether the command was sent (MasterNotFoundError, "The previous master is
now a slave" are not "maybe applied").
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import DaemonFactory, RedisServer, free_port, wait_until
from daemon.config import Settings
from daemon.connection import make_client
from daemon.redis_errors import REFUSED, SENT, maybe_applied

HANDLER = ("--handler", "handlers_for_tests:record")
MASTER_PASSWORD = "master-pw"
SENTINEL_PASSWORD = "sentinel:pw/with@odd#chars"  # percent-encoded in the URL
ENCODED = "sentinel%3Apw%2Fwith%40odd%23chars"


@dataclasses.dataclass
class SentinelSetup:
    master: RedisServer
    port: int

    def url(self, query: str = f"?sentinel_password={ENCODED}") -> str:
        return f"redis+sentinel://:{MASTER_PASSWORD}@127.0.0.1:{self.port}/mymaster/0{query}"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    master = RedisServer(tmp_path / "m", None, "--requirepass", MASTER_PASSWORD)
    master.workdir.mkdir()
    master.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass mymaster {MASTER_PASSWORD}\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        f'requirepass "{SENTINEL_PASSWORD}"\n'
    )
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(
        port=port, password=SENTINEL_PASSWORD, socket_timeout=1, socket_connect_timeout=1
    )
    try:
        wait_until(
            lambda: probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"),
            10,
            "the sentinel answers with the password",
        )
        yield SentinelSetup(master, port)
    finally:
        proc.kill()
        proc.wait(5)
        master.stop()


def test_sentinel_password_in_the_url_consumes(
    sentinel: SentinelSetup, taskd: DaemonFactory
) -> None:
    daemon = taskd.consume(sentinel.url(), "--queue", "jobs", *HANDLER)
    sentinel.master.client(password=MASTER_PASSWORD).lpush("jobs", "via-sentinel")
    wait_until(lambda: "via-sentinel" in taskd.done_bodies(), 15, "a task via the sentinel")
    assert daemon.proc.poll() is None
    text = daemon.log_path.read_text()
    assert SENTINEL_PASSWORD not in text and ENCODED not in text


def test_sentinel_password_from_a_file(
    sentinel: SentinelSetup, taskd: DaemonFactory, tmp_path: Path
) -> None:
    secret = tmp_path / "sentinel-password"
    secret.write_text(SENTINEL_PASSWORD + "\n")
    url = sentinel.url(query="")
    taskd.consume(url, "--queue", "jobs", "--sentinel-password-file", str(secret), *HANDLER)
    sentinel.master.client(password=MASTER_PASSWORD).lpush("jobs", "via-file")
    wait_until(lambda: "via-file" in taskd.done_bodies(), 15, "a task via the sentinel")


@pytest.mark.parametrize(
    "query", ["?sentinel_password=wrong", ""], ids=["wrong-password", "no-password"]
)
def test_refused_sentinel_auth_is_exit_78_in_one_line(
    sentinel: SentinelSetup, taskd: DaemonFactory, query: str
) -> None:
    done = taskd.run(
        "consume",
        "--redis-url",
        sentinel.url(query=query),
        "--queue",
        "jobs",
        "--connect-timeout",
        "1",
        *HANDLER,
        timeout=20,
    )
    assert done.returncode == 78, done.stderr
    errors = done.stderr.decode().strip().splitlines()
    assert len(errors) == 1, errors
    assert f"sentinel 127.0.0.1:{sentinel.port} refused authentication" in errors[0]
    assert "sentinel_password=" in errors[0]  # says where the sentinels' password goes
    assert "wrong" not in errors[0].split("refused", 1)[0]  # the URL is shown redacted


def test_sentinel_errors_say_whether_the_command_was_sent(sentinel: SentinelSetup) -> None:
    base = Settings(
        redis_url=sentinel.url(), block_timeout=0.5, connect_timeout=1, socket_timeout=1
    ).with_derived()
    client = make_client(base)
    client.lpush("q", "first")  # a pooled connection to the master
    # no such master: the sentinel was asked, nothing was sent to any master
    unknown = make_client(
        dataclasses.replace(base, redis_url=sentinel.url().replace("/mymaster/", "/nosuch/"))
    )
    with pytest.raises(redis.ConnectionError) as info:
        unknown.lpush("q", "never")
    assert "no master found" in str(info.value).lower()
    assert getattr(info.value, SENT) is False and not maybe_applied(info.value)
    # the master is demoted under our pooled connection: READONLY, turned by redis-py into
    # "The previous master is now a slave": refused, not maybe applied
    other = RedisServer(sentinel.master.workdir.parent / "other")
    other.workdir.mkdir()
    other.start()
    try:
        master = sentinel.master.client(password=MASTER_PASSWORD)
        master.replicaof("127.0.0.1", other.port)
        wait_until(lambda: master.info("replication")["role"] == "slave", 5, "demoted")
        with pytest.raises(redis.ConnectionError) as info:
            client.lpush("q", "refused")
        assert "previous master is now a slave" in str(info.value)
        assert getattr(info.value, REFUSED) is True and not maybe_applied(info.value)
    finally:
        other.stop()
