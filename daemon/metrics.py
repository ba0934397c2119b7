"""Prometheus metrics of a taskd process: declared once here, updated by the loops.

Names are a contract (dashboards, alerts and the runbook use them): see README "Observability";
docs/design.md says which module updates each.
No task or worker ids as labels: the scrape target identifies the process.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from daemon import __version__

disable_created_metrics()  # *_created series double the output and no alert uses them
_QUEUE = ["queue"]

TASKS_CLAIMED = Counter("taskd_tasks_claimed", "Tasks claimed from a queue", _QUEUE)
TASKS_ACKED = Counter("taskd_tasks_acked", "Tasks handled successfully and acked", _QUEUE)
TASKS_FAILED = Counter("taskd_tasks_failed", "Handler failures (each failed attempt)", _QUEUE)
TASKS_RETRIED = Counter("taskd_tasks_retried", "Failed tasks scheduled for a retry", _QUEUE)
TASKS_DEAD_LETTERED = Counter(
    "taskd_tasks_dead_lettered", "Tasks moved to the dead letters", _QUEUE
)
TASKS_RECOVERED = Counter(
    "taskd_tasks_recovered", "Tasks taken back from a dead or restarted worker", _QUEUE
)
TASKS_DONE_BUT_RECOVERED = Counter(
    "taskd_tasks_done_but_recovered",
    "Tasks handled successfully after a peer had already recovered them (they may run twice)",
    _QUEUE,
)
TASK_DURATION = Histogram(
    "taskd_task_duration_seconds",
    "Handler run time",
    _QUEUE,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
TASKS_IN_PROGRESS = Gauge("taskd_tasks_in_progress", "Tasks being handled now", _QUEUE)
LAST_PROGRESS = Gauge(
    "taskd_last_progress_timestamp_seconds", "Unix time the loop last made progress"
)
LAST_SUCCESS = Gauge(
    "taskd_last_success_timestamp_seconds", "Unix time of the last acked task", _QUEUE
)
REDIS_CONNECTED = Gauge("taskd_redis_connected", "1 while Redis answers, else 0")
REDIS_RECONNECTS = Counter("taskd_redis_reconnects", "Outages of Redis that ended")
REDIS_ERRORS = Counter("taskd_redis_errors", "Failed Redis calls", ["kind"])
REDIS_OUT_OF_MEMORY = Gauge(
    "taskd_redis_out_of_memory", "1 while Redis refuses writes because maxmemory is reached"
)
REDIS_EVICTION_POLICY = Gauge(
    "taskd_redis_eviction_policy",
    "1 for Redis's maxmemory-policy as last read (anything but noeviction can lose tasks)",
    ["policy"],
)
HELPER_THREAD_DEATHS = Counter(
    "taskd_helper_thread_deaths",
    "Helper threads (heartbeat keeper, probe server, stall detector) that died",
    ["thread"],
)
BUILD_INFO = Info("taskd_build", "taskd build information")
BUILD_INFO.info({"version": __version__})


def preexport(queues: tuple[str, ...]) -> None:
    """Create every labelled series at zero, so rate() works from the first scrape."""
    for queue in queues:
        for counter in (
            TASKS_CLAIMED,
            TASKS_ACKED,
            TASKS_FAILED,
            TASKS_RETRIED,
            TASKS_DEAD_LETTERED,
            TASKS_RECOVERED,
            TASKS_DONE_BUT_RECOVERED,
        ):
            counter.labels(queue=queue)
        TASK_DURATION.labels(queue=queue)
        TASKS_IN_PROGRESS.labels(queue=queue).set(0)
        LAST_SUCCESS.labels(queue=queue)


def track_progress(progress: Any) -> None:
    """taskd_last_progress_timestamp_seconds read from the progress clock at scrape time.

    (Setting a gauge on every loop turn would cost the hot path a lock for nothing.)
    """
    LAST_PROGRESS.set_function(lambda: time.time() - progress.snapshot().since_progress)


def registry() -> CollectorRegistry:
    """The registry served on /metrics (the default one, with process collectors)."""
    return REGISTRY


_CHANNEL = ["channel"]
PUBSUB_MESSAGES = Counter("taskd_pubsub_messages", "Pub/sub messages received", _CHANNEL)
PUBSUB_FAILURES = Counter(
    "taskd_pubsub_failures", "Pub/sub messages whose handler raised", _CHANNEL
)
PUBSUB_UNSUBSCRIBED_SECONDS = Counter(
    "taskd_pubsub_unsubscribed_seconds",
    "Seconds spent not subscribed (messages published then were lost)",
    _CHANNEL,
)

WEB_REQUESTS = Counter("taskd_web_requests", "Web requests", ["route", "status"])
WEB_ENQUEUE_SECONDS = Histogram(
    "taskd_web_enqueue_seconds",
    "Time to push one task or message to Redis from the web app",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def preexport_channels(channels: tuple[str, ...]) -> None:
    """Create the pub/sub series at zero for each channel or pattern."""
    for channel in channels:
        for counter in (PUBSUB_MESSAGES, PUBSUB_FAILURES, PUBSUB_UNSUBSCRIBED_SECONDS):
            counter.labels(channel=channel)


class QueueMetrics:
    """The labelled series of one queue, looked up once (a label lookup per task is not free)."""

    def __init__(self, queue: str) -> None:
        self.claimed = TASKS_CLAIMED.labels(queue=queue)
        self.acked = TASKS_ACKED.labels(queue=queue)
        self.failed = TASKS_FAILED.labels(queue=queue)
        self.retried = TASKS_RETRIED.labels(queue=queue)
        self.dead_lettered = TASKS_DEAD_LETTERED.labels(queue=queue)
        self.recovered = TASKS_RECOVERED.labels(queue=queue)
        self.done_but_recovered = TASKS_DONE_BUT_RECOVERED.labels(queue=queue)
        self.duration = TASK_DURATION.labels(queue=queue)
        self.in_progress = TASKS_IN_PROGRESS.labels(queue=queue)
        self.last_success = LAST_SUCCESS.labels(queue=queue)
