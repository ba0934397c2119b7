"""redis+cluster:// URLs (parse, redaction) and the hash-tag rule, without a server."""

from __future__ import annotations

import pytest
import redis

from daemon import config, redis_url
from daemon.keys import hash_tag
from daemon.redis_errors import classify, maybe_applied
from daemon.settings_rules import cluster_queues_have_hash_tags


def test_cluster_url_names_its_nodes_and_credentials() -> None:
    target = redis_url.parse("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,node3/")
    assert target.cluster and not target.sentinel and not target.tls
    assert target.hosts == (("10.0.0.1", 7000), ("::1", 7001), ("node3", 6379))
    assert (target.username, target.password, target.db) == ("app", "p@ss", 0)
    assert redis_url.parse("rediss+cluster://h:1").tls


def test_cluster_url_is_redacted_and_refuses_a_database_other_than_0() -> None:
    shown = redis_url.redact("redis+cluster://app:s@cr/et@h1:7000,h2:7001/")
    assert "s@cr" not in shown and shown.endswith("@h1:7000,h2:7001/")
    with pytest.raises(redis_url.RedisUrlError, match="database 0 only") as caught:
        redis_url.parse("redis+cluster://:hunter2@h1:7000/3")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(redis_url.RedisUrlError, match="unknown parameter"):
        redis_url.parse("redis+cluster://h1:7000/?sentinel_password=x")


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("{orders}", "orders"),
        ("{orders}:x", "orders"),
        ("a{b}c", "b"),
        ("orders", None),
        ("{}orders", None),
        ("{orders", None),
        ("a{}{b}", None),
    ],
)
def test_hash_tag_is_read_as_redis_cluster_reads_it(name: str, tag: str | None) -> None:
    assert hash_tag(name) == tag


def test_hash_tag_rule_applies_on_a_cluster_only() -> None:
    single = config.load({"redis_url": "redis://h:1/0", "queues": ("orders",)}, env={})
    assert cluster_queues_have_hash_tags(single) is None  # single-node names unchanged
    cluster = config.load({"redis_url": "redis+cluster://h:1", "queues": ("orders",)}, env={})
    assert cluster_queues_have_hash_tags(cluster) == (
        "--queue=orders: on a Redis Cluster a queue needs a hash tag, e.g. {orders}, "
        "so its keys share one slot"
    )
    tagged = config.load({"redis_url": "redis+cluster://h:1", "queues": ("{orders}",)}, env={})
    assert cluster_queues_have_hash_tags(tagged) is None


def test_the_wsgi_factory_refuses_a_queue_without_a_hash_tag_on_a_cluster() -> None:
    from daemon.web import WsgiConfigError, app_from_env

    env = {"TASKD_REDIS_URL": "redis+cluster://h:1", "TASKD_QUEUES": "orders"}
    with pytest.raises(WsgiConfigError, match=r"a queue needs a hash tag, e.g. \{orders\}"):
        app_from_env(env, configure_logging=False)


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (redis.exceptions.ClusterDownError("The cluster is down"), "refused"),
        (redis.exceptions.TryAgainError("Multiple keys request during rehashing"), "refused"),
        (redis.exceptions.MovedError("3999 127.0.0.1:7001"), "refused"),
        (redis.exceptions.SlotNotCoveredError('Slot "5" not covered'), "unreachable"),
        (
            redis.exceptions.RedisClusterException("Redis Cluster cannot be connected."),
            "unreachable",
        ),
        (
            redis.exceptions.RedisClusterException("Keys in request don't hash to the same slot"),
            "fatal",
        ),
    ],
)
def test_a_cluster_changing_state_is_waited_out_not_fatal(error: Exception, fault: str) -> None:
    """redis-py cuts the code off these messages; they are known by type (CLUSTERDOWN while
    a failed primary is replaced must not stop every consumer of the cluster)."""
    assert classify(error) == fault
    assert not maybe_applied(error)
