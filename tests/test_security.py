"""Secure by default: TLS with verification, minimal ACL users, secrets kept out of output,
and input from Redis treated as untrusted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, DaemonFactory, RedisServer, free_port, wait_until

OPENSSL = shutil.which("openssl") or "openssl"
HANDLER = ("--handler", "handlers_for_tests:record")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    _run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=folder,
    )
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_cert(folder: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    _run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        "/CN=localhost",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _run(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=folder,
    )
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "pki"
    ca = make_ca(folder, "ca")
    rogue = make_ca(folder, "rogue")
    server = make_cert(folder, ca, "server")
    client = make_cert(folder, ca, "client")
    return {
        "ca": ca[0],
        "rogue": rogue[0],
        "server_crt": server[0],
        "server_key": server[1],
        "client_crt": client[0],
        "client_key": client[1],
    }


def tls_server(tmp_path: Path, pki: dict[str, Path], auth_clients: str = "no") -> RedisServer:
    server = RedisServer(tmp_path / "tls")
    server.workdir.mkdir()
    tls_port = free_port()
    server.start(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(pki["server_crt"]),
        "--tls-key-file",
        str(pki["server_key"]),
        "--tls-ca-cert-file",
        str(pki["ca"]),
        "--tls-auth-clients",
        auth_clients,
    )
    server.tls_port = tls_port  # type: ignore[attr-defined]
    return server


def test_consumer_and_producer_work_over_tls_with_verification(
    tmp_path: Path, pki: dict[str, Path], taskd: DaemonFactory
) -> None:
    server = tls_server(tmp_path, pki)
    try:
        url = f"rediss://localhost:{server.tls_port}/0"  # type: ignore[attr-defined]
        tls = ("--tls-ca-file", str(pki["ca"]))
        pushed = taskd.run("enqueue", "--redis-url", url, *tls, "--queue", "jobs", "over-tls")
        assert pushed.returncode == 0, pushed.stderr
        taskd.consume(url, "--queue", "jobs", *HANDLER, *tls)
        wait_until(lambda: taskd.done_bodies() == ["over-tls"], 15, "the task over TLS")
    finally:
        server.stop()


def test_consumer_works_over_mutual_tls_with_a_client_certificate(
    tmp_path: Path, pki: dict[str, Path], taskd: DaemonFactory
) -> None:
    server = tls_server(tmp_path, pki, auth_clients="yes")
    try:
        url = f"rediss://localhost:{server.tls_port}/0"  # type: ignore[attr-defined]
        tls = (
            "--tls-ca-file",
            str(pki["ca"]),
            "--tls-cert-file",
            str(pki["client_crt"]),
            "--tls-key-file",
            str(pki["client_key"]),
        )
        assert (
            taskd.run("enqueue", "--redis-url", url, *tls, "--queue", "jobs", "m").returncode == 0
        )
        taskd.consume(url, "--queue", "jobs", *HANDLER, *tls)
        wait_until(lambda: taskd.done_bodies() == ["m"], 15, "the task over mutual TLS")
    finally:
        server.stop()


def test_server_certificate_from_an_unknown_ca_is_refused_with_exit_78(
    tmp_path: Path, pki: dict[str, Path], taskd: DaemonFactory
) -> None:
    server = tls_server(tmp_path, pki)
    try:
        url = f"rediss://localhost:{server.tls_port}/0"  # type: ignore[attr-defined]
        daemon = taskd.consume(url, "--queue", "jobs", *HANDLER, "--tls-ca-file", str(pki["rogue"]))
        assert daemon.wait(15) == 78
        out = daemon.log_path.read_text()
        assert "certificate verify failed" in out.lower()
        assert "Traceback" not in out
        insecure = taskd.consume(url, "--queue", "jobs", *HANDLER, "--tls-insecure")
        insecure.wait_for_event("tls.verification_disabled", 10)
        server.client().lpush("jobs", "unverified")
        wait_until(lambda: taskd.done_bodies() == ["unverified"], 15, "the task, unverified")
    finally:
        server.stop()


def _acl_server(tmp_path: Path) -> RedisServer:
    acl = (ROOT / "conf" / "redis-acl.conf").read_text()
    for role in ("consumer", "producer", "web", "subscriber"):
        acl = acl.replace(f">CHANGE-ME-{role}", f">pw-{role}")
    path = tmp_path / "users.acl"  # an aclfile takes no comments: as the file's header says
    path.write_text("\n".join(x for x in acl.splitlines() if x.strip() and not x.startswith("#")))
    server = RedisServer(tmp_path / "acl")
    server.workdir.mkdir()
    return server.start("--aclfile", str(path))


def test_consumer_acl_user_covers_reliable_consumption_and_recovery(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = _acl_server(tmp_path)
    try:
        port = server.port
        producer = f"redis://taskd-producer:pw-producer@127.0.0.1:{port}/0"
        consumer = f"redis://taskd-consumer:pw-consumer@127.0.0.1:{port}/0"
        bodies = ["slow:1.5:held", "fail:poison", "plain"]
        assert (
            taskd.run("enqueue", "--redis-url", producer, "--queue", "task:q", *bodies).returncode
            == 0
        )
        timing = ("--heartbeat-ttl", "2", "--recovery-interval", "1", "--max-attempts", "2")
        victim = taskd.consume(consumer, "--queue", "task:q", *HANDLER, *timing, "--worker-id", "A")
        wait_until(lambda: taskd.records(), 15, "A to start the slow task")
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        peer = taskd.consume(
            consumer,
            "--queue",
            "task:q",
            *HANDLER,
            *timing,
            "--worker-id",
            "B",
            "--metrics-port",
            str(metrics := free_port()),
        )
        admin_view = server.client()
        admin_view.execute_command("AUTH", "taskd-consumer", "pw-consumer")
        wait_until(lambda: {"slow:1.5:held", "plain"} <= set(taskd.done_bodies()), 25, "done")
        wait_until(lambda: admin_view.llen("task:q:dead") == 1, 15, "the poison dead-lettered")
        status = taskd.run("status", "--redis-url", consumer, "--queue", "task:q", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)[0]["dead"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert 'taskd_queue_depth{queue="task:q",state="dead"} 1.0' in r.read().decode()
        out = peer.log_path.read_text()
        assert "NOPERM" not in out and "recovery.dead_worker" in out
        # `~task:*` leaves out the shard past ours ({task:q:0}): the look is given up, once
        (unchecked,) = peer.events("queue.unserved_shard_unchecked")
        assert unchecked["shard"] == "{task:q:0}"
    finally:
        server.stop()


def test_producer_acl_user_can_schedule_delayed_tasks(tmp_path: Path, taskd: DaemonFactory) -> None:
    server = _acl_server(tmp_path)
    try:
        producer = f"redis://taskd-producer:pw-producer@127.0.0.1:{server.port}/0"
        done = taskd.run(
            "enqueue", "--redis-url", producer, "--queue", "task:q", "--delay", "1h", "x"
        )
        assert done.returncode == 0, done.stderr
        assert server.client().zcard("task:q:delayed") == 1
    finally:
        server.stop()


def test_noperm_is_reported_clearly_instead_of_looping(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    server = _acl_server(tmp_path)
    try:
        wrong_role = f"redis://taskd-producer:pw-producer@127.0.0.1:{server.port}/0"
        daemon = taskd.consume(wrong_role, "--queue", "task:q", *HANDLER)
        assert daemon.wait(15) == 78
        out = daemon.log_path.read_text()
        # NOPERM, or its form for a command inside a taskd script (Redis 7)
        assert any(m in out for m in ("NOPERM", "no permissions", "can't run this command"))
        assert "conf/redis-acl.conf" in out
        assert "pw-producer" not in out
    finally:
        server.stop()


def test_password_from_a_file_or_the_environment_never_shows(
    tmp_path: Path, taskd: DaemonFactory
) -> None:
    secret = "file-Secret-42"
    server = RedisServer(tmp_path / "pw", None, "--requirepass", secret)
    server.workdir.mkdir()
    server.start()
    try:
        pwfile = tmp_path / "redis.pw"
        pwfile.write_text(secret + "\n")
        pwfile.chmod(0o600)
        url = f"redis://127.0.0.1:{server.port}/0"
        port = free_port()
        daemon = taskd.consume(
            url,
            "--queue",
            "jobs",
            *HANDLER,
            "--redis-password-file",
            str(pwfile),
            "--metrics-port",
            str(port),
            "--log-level",
            "debug",
        )
        via_env = taskd.start(
            "consume",
            "--redis-url",
            url,
            "--queue",
            "jobs",
            *HANDLER,
            "--block-timeout",
            "0.5",
            env=taskd.env(TASKD_REDIS_PASSWORD=secret),
        )
        for started in (daemon, via_env):  # both serving before the tasks (a loaded machine)
            started.wait_for_event("consumer.started", 30)
        daemon.wait_for_event("metrics.serving", 5)
        server.client(password=secret).lpush("jobs", "a", "b", "c", "d")
        wait_until(lambda: len(taskd.done_bodies()) == 4, 15, "tasks done by both")
        assert {r[0] for r in taskd.records()} <= {str(daemon.pid), str(via_env.pid)}
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().decode()
        assert secret not in cmdline  # nothing to see in ps
        pages = []
        for path in ("/metrics", "/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                pages.append(r.read().decode())
        wrong = tmp_path / "wrong.pw"
        wrong.write_text(secret + "-nope")
        failed = taskd.run("status", "--redis-url", url, "--redis-password-file", str(wrong))
        missing = taskd.run("status", "--redis-url", url, "--redis-password-file", "/nonexistent")
        assert failed.returncode == 78 and missing.returncode == 78
        assert "/nonexistent" in missing.stderr.decode()
        for d in (daemon, via_env):
            d.signal(signal.SIGTERM)
            d.wait(15)
        everything = "\n".join(
            [
                *pages,
                daemon.log_path.read_text(),
                via_env.log_path.read_text(),
                failed.stderr.decode(),
                failed.stdout.decode(),
                missing.stderr.decode(),
            ]
        )
        assert secret not in everything and secret + "-nope" not in everything
    finally:
        server.stop()


def test_untrusted_dead_letters_and_bodies_never_crash_anything(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    client = redis_server.client()
    junk = [b"\xff\xfe not json", b"[1, 2, 3]", b'{"body": 5}', b"{" * 10_000, b""]
    client.rpush("jobs:dead", *junk)
    client.hset("jobs:attempts", "not-a-digest", "not-a-number")
    client.zadd("jobs:workers", {"\u00e9vil worker \n name": 1})
    listing = taskd.run("dead", "list", "--redis-url", redis_server.url, "--queue", "jobs")
    assert listing.returncode == 0, listing.stderr
    lines = [json.loads(x) for x in listing.stdout.decode().splitlines()]
    assert len(lines) == len(junk) and all("error" in x or "body" in x for x in lines)
    status = taskd.run("status", "--redis-url", redis_server.url, "--queue", "jobs", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)[0]["dead"] == len(junk)
    requeue = taskd.run("dead", "requeue", "--redis-url", redis_server.url, "--queue", "jobs")
    assert requeue.returncode == 0 and b"unreadable left in place" in requeue.stdout
    huge_binary = b"\xff" * 5_000_000
    client.lpush("work", huge_binary, b"\x00\x01 not utf-8 \xc3", b"fine")
    daemon = taskd.consume(redis_server.url, "--queue", "work", "--handler", "daemon.handlers:log")
    wait_until(lambda: client.llen("work") == 0, 20, "all bodies handled")
    wait_until(lambda: daemon.events("task.done") and len(daemon.events("task.done")) == 3, 10, "3")
    assert daemon.proc.poll() is None
    picky = taskd.consume(
        redis_server.url,
        "--queue",
        "json-only",
        "--handler",
        "daemon.handlers:sleep",
        "--max-attempts",
        "1",
    )
    client.lpush("json-only", b"\xff\xfe")
    wait_until(lambda: client.llen("json-only:dead") == 1, 10, "dead-lettered with a reason")
    entry = json.loads(client.lindex("json-only:dead", 0))
    assert entry["body_encoding"] == "base64" and "sleep handler expects" in entry["error"]
    assert picky.proc.poll() is None


def test_web_api_requires_the_bearer_token_when_one_is_set(redis_server: RedisServer) -> None:
    import dataclasses

    from daemon.config import load
    from daemon.web import create_app

    settings = load({"redis_url": redis_server.url}, env={"TASKD_WEB_TOKEN": "t0ken-abc"})
    assert "t0ken-abc" not in repr(settings)
    app = create_app(settings)
    web = app.test_client()
    task = {"queue": settings.queues[0], "body": "x"}
    assert web.post("/api/tasks", json=task).status_code == 401
    wrong = web.post("/api/tasks", json=task, headers={"Authorization": "Bearer t0ken-abd"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert web.get("/api/queues").status_code == 401
    good = {"Authorization": "Bearer t0ken-abc"}
    assert web.post("/api/tasks", json=task, headers=good).status_code == 202
    assert web.get("/api/queues", headers=good).status_code == 200
    assert redis_server.client().llen(settings.queues[0]) == 1
    open_app = create_app(dataclasses.replace(settings, web_token="")).test_client()
    assert open_app.post("/api/tasks", json=task).status_code == 202  # no token set: open
