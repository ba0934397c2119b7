"""After a reconnect a consumer closes only the claim connections its own process opened."""

from __future__ import annotations

from conftest import DaemonFactory, RedisServer, blocked_claims, wait_until
from tools.chaos_proxy import ChaosProxy

HANDLER = ("--handler", "handlers_for_tests:record")


def test_reconnect_does_not_close_the_claim_connection_of_another_queue_sharing_the_id(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    admin = redis_server.client()

    def claim_connections() -> list[dict[str, str]]:
        return [c for c in admin.client_list() if c["name"] == "taskd-claim:w1"]

    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        quiet = ("--worker-id", "w1", "--backoff-cap", "0.2", *HANDLER)
        bystander = taskd.consume(redis_server.url, "--queue", "b", *quiet)
        cut = taskd.consume(f"redis://127.0.0.1:{proxy.port}/0", "--queue", "a", *quiet)
        bystander.wait_for_event("redis.connected", 10)
        cut.wait_for_event("redis.connected", 10)
        wait_until(lambda: len(claim_connections()) == 2, 10, "both claim connections")
        before = {int(c["id"]) for c in claim_connections()}
        proxy.set_mode("reset")  # the consumer of queue a loses its connection and reconnects
        cut.wait_for_event("redis.reconnected", 10)
        wait_until(lambda: len(claim_connections()) == 2, 10, "a's new claim connection")
        # a new claim blocked in BLMOVE after the reconnect: its orphan check has run
        wait_until(lambda: blocked_claims(admin, "w1") - before, 10, "a's new claim blocked")
        assert cut.events("redis.orphan_connection_closed") == []
        assert bystander.events("redis.disconnected") == []
        admin.lpush("a", "for-a")
        admin.lpush("b", "for-b")
        wait_until(lambda: sorted(taskd.done_bodies()) == ["for-a", "for-b"], 10, "both served")


def test_reconnect_still_closes_this_process_own_half_open_claim_connection(
    redis_server: RedisServer, taskd: DaemonFactory
) -> None:
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        daemon = taskd.consume(
            f"redis://127.0.0.1:{proxy.port}/0",
            *("--queue", "a", "--worker-id", "w1", *HANDLER),
            *("--block-timeout", "1", "--socket-timeout", "2", "--connect-timeout", "1"),
            *("--backoff-cap", "0.3"),
        )
        daemon.wait_for_event("redis.connected", 10)
        proxy.set_mode("blackhole")  # the server keeps the old flow: a half-open connection
        daemon.wait_for_event("redis.disconnected", 10)
        proxy.set_mode("pass")
        closed = daemon.wait_for_event("redis.orphan_connection_closed", 15)
        assert closed[0]["client_id"]
