"""The per-process HTTP server: /metrics, /healthz, /readyz, on its own (guarded) thread.

It never blocks the consume loop: it reads the progress clocks and link state (thread-safe)
and, at scrape time, the queue depths from Redis within one deadline for the whole scrape.

/healthz is liveness, "restarting this process would help": 503 when the loop is stuck, a
handler runs past --task-timeout, a helper thread died, or Redis answers but no work got done
(nothing claimed or settled, and no empty claim either) for --stall-timeout. /readyz is
"this process can do its job now": 503 while Redis is unreachable or refusing writes.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import metrics
from daemon.config import ConfigError, Settings
from daemon.duties import UNSERVED_EVERY
from daemon.faults import LinkState
from daemon.liveness import GuardedThread, Progress, Snapshot, stall_reason
from daemon.redis_url import redact
from daemon.status import QueueStatus, unserved_tasks

SCRAPE_DEADLINE = 2.0  # seconds one scrape may spend reading depths before it answers without
STALE_LIMIT = 60.0  # a late scrape exports the last read only while it is younger than this
_STATES = ("pending", "processing", "delayed", "dead")


class QueueDepthCollector(Collector):
    """`taskd_queue_depth{queue,state}` and workers alive, read at scrape time.

    Each shard of a sharded queue is a queue label of its own. The shard past the ones
    served (daemon.keys.unserved_shard) is read too and exported while it holds tasks, with
    its workers alive at 0: tasks no consumer serves raise TaskdNoLiveConsumers instead of
    waiting unseen.

    Reads run on a thread of their own, one at a time, in two pipelined round trips (see
    daemon.status): a scrape waits at most `deadline` for the read. A late or failed read
    counts in `taskd_queue_depth_scrape_errors_total`; the scrape then exports the last
    complete read if it is younger than STALE_LIMIT (`taskd_queue_depth_age_seconds` says
    how old the exported depths are), else no depths at all.
    """

    def __init__(
        self,
        settings: Settings,
        client: Any = None,
        deadline: float = SCRAPE_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            from daemon.connection import make_client

            quick = dataclasses.replace(
                settings,
                socket_timeout=deadline,
                connect_timeout=deadline,
                block_timeout=deadline / 2,
            )
            client = make_client(quick, client_name=f"taskd-metrics:{settings.worker_id}")
        self.client = client
        self.queues: tuple[str, ...] = settings.served_queues  # each shard: a label value
        # the shard past ours: exported only while it holds tasks (TaskdNoLiveConsumers)
        self.named, self.shards = settings.queues, settings.shards  # for the shard past ours
        self._unserved_at = 0.0
        self._unserved_found: list[QueueStatus] = []
        self.deadline = deadline
        self.clock = clock
        self.errors = 0
        self._last: tuple[float, list[QueueStatus]] | None = None  # (read when, rows)
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """The families, without reading Redis (registering must not cost a round trip)."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        started = self.clock()
        self._wait_for_read(started)
        last = self._last
        fresh = last is not None and last[0] >= started
        if not fresh:
            with self._lock:
                self.errors += 1
        rows: list[QueueStatus] = []
        age = None
        if last is not None and self.clock() - last[0] <= STALE_LIMIT:
            rows, age = last[1], max(0.0, self.clock() - last[0])
        yield from self._families(rows, age)

    def _wait_for_read(self, started: float) -> None:
        """Start a read unless one is under way (a slow Redis gets one at a time); wait."""
        with self._lock:
            if self._reader is None or not self._reader.is_alive():
                self._reader = threading.Thread(
                    target=self._read, name="taskd-scrape-read", daemon=True
                )
                self._reader.start()
            reader = self._reader
        reader.join(max(0.0, self.deadline - (self.clock() - started)))

    def _read(self) -> None:
        from daemon.status import queue_statuses

        try:
            rows = queue_statuses(self.client, self.queues)
        except Exception:  # noqa: BLE001 - counted by the scrape that finds no fresh read
            return
        rows += self._unserved_rows()
        self._last = (self.clock(), rows)  # fresh for every scrape waiting now

    def _unserved_rows(self) -> list[QueueStatus]:
        """The shards past ours that hold tasks, looked at every UNSERVED_EVERY seconds (a
        scrape in between reuses the last look); none when the ACL forbids the look."""
        now = self.clock()
        if self.named and now >= self._unserved_at:
            self._unserved_at = now + UNSERVED_EVERY
            try:
                found = unserved_tasks(self.client, self.named, self.shards)
            except redis.RedisError:
                found = None
            self._unserved_found = [
                QueueStatus(shard, waiting, 0, 0, 0) for shard, waiting in (found or {}).items()
            ]
        return self._unserved_found

    def _families(
        self, rows: Sequence[QueueStatus] = (), age: float | None = None
    ) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "taskd_queue_depth", "Tasks per queue and state", labels=["queue", "state"]
        )
        alive = GaugeMetricFamily(
            "taskd_queue_workers_alive", "Workers with a live heartbeat per queue", labels=["queue"]
        )
        for st in rows:
            for state in _STATES:
                depth.add_metric([st.queue, state], getattr(st, state))
            alive.add_metric([st.queue], sum(1 for w in st.workers if w["alive"]))
        oldest = GaugeMetricFamily(
            "taskd_queue_oldest_task_age_seconds",
            "Seconds since the oldest pending task was enqueued (only for tasks stamped by "
            "taskd's producers; absent when the queue is empty or the age is unknown)",
            labels=["queue"],
        )
        for st in rows:
            if st.oldest_age_seconds is not None:
                oldest.add_metric([st.queue], st.oldest_age_seconds)
        yield depth
        yield alive
        yield oldest
        errors = CounterMetricFamily(
            "taskd_queue_depth_scrape_errors",
            "Scrapes whose queue-depth read failed or missed its deadline",
        )
        errors.add_metric([], self.errors)
        yield errors
        stale = GaugeMetricFamily(
            "taskd_queue_depth_age_seconds",
            "Age of the exported queue depths (above 0: the last read was late or failed)",
        )
        if age is not None:
            stale.add_metric([], round(age, 3))
        yield stale


# -- /healthz ---------------------------------------------------------------------------------
def helper_reason(dead_helpers: dict[str, str]) -> str | None:
    """Why a dead helper thread makes the process unhealthy, or None."""
    if not dead_helpers:
        return None
    deaths = "; ".join(f"{name}: {error}" for name, error in sorted(dead_helpers.items()))
    return f"helper thread died ({deaths})"


def stale_work_reason(
    snap: Snapshot,
    since_work: float,
    since_reachable: float | None,
    stall_timeout: float,
    link: LinkState | None,
) -> str | None:
    """Why the loop turns but gets nothing done although Redis answers, or None.

    Liveness is "work is getting done, or there is none to do": a claim that finds the
    queue empty counts as work. Not judged while a handler runs (its age is, by
    --task-timeout) nor while Redis is unreachable (that is /readyz's business: restarting
    cannot fix Redis); the time counts from when Redis was last reached, so a long outage
    is not mistaken for stale work once it ends.
    """
    if link is None or snap.task is not None:
        return None
    if not (link.connected or link.rejecting):
        return None
    if link.rejecting and link.rejecting_since is not None:  # answering again since then
        since_reachable = link.clock() - link.rejecting_since
    stale = since_work if since_reachable is None else min(since_work, since_reachable)
    if stale <= stall_timeout:
        return None
    refusing = refusal(link)
    why = f"Redis refuses writes: {refusing}" if refusing else "Redis answers"
    return (
        f"no task claimed or settled for {stale:.1f} s although {why}, "
        f"past --stall-timeout {stall_timeout:g} s"
    )


def health(
    progress: Progress,
    settings: Settings,
    link: LinkState | None = None,
    since_reachable: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz: 503 with the reason once restarting would help.

    `since_reachable`: seconds since Redis was last reached after being unreachable (None:
    unknown, the work clock alone counts).
    """
    snap = progress.snapshot()
    since_work = progress.since_work()
    deaths = {name: redact(error) for name, error in progress.dead_helpers.items()}
    dead = helper_reason(deaths)
    stalled = stall_reason(snap, settings.stall_timeout, settings.task_timeout)
    stale = stale_work_reason(snap, since_work, since_reachable, settings.stall_timeout, link)
    reason = dead or stalled or stale
    state = "helper_died" if dead else ("stalled" if reason else "ok")
    body: dict[str, Any] = {
        "state": state,
        **snap.as_dict(),
        "seconds_since_work": round(since_work, 3),
    }
    if deaths:
        body["dead_helpers"] = deaths  # error texts may quote a Redis URL: its password hidden
    if reason:
        body["reason"] = reason
    return (503 if reason else 200), body


# -- /readyz ----------------------------------------------------------------------------------
def refusal(link: LinkState) -> str:
    """Why Redis, reachable, refuses us now; "" when it does not (or is not reachable at all).

    Out of memory is known only while connected: once Redis is away it is not known any more.
    """
    return link.refusing if link.connected else link.rejecting


def readiness(link: LinkState, waiting: str = "") -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /readyz: 503 with the reason while Redis cannot serve us.

    Refusing writes (e.g. out of memory) is not ready either: the consumer keeps draining,
    but nothing can be enqueued or retried until memory is freed. An eviction policy other
    than noeviction is ready with a warning (it works, but may lose tasks). `waiting`: why a
    healthy loop does not consume yet (its worker id is held elsewhere): not ready either.
    """
    body: dict[str, Any]
    # Full (the consumer still drains), or answering only with refusals (a replica, LOADING...)
    refusing = refusal(link)
    if refusing:
        body = {
            "state": "not_ready",
            "redis": "connected",
            "refusing": refusing,
            "reason": f"Redis refuses writes: {refusing}",
        }
        status = 503
    elif link.connected and waiting:
        body = {"state": "not_ready", "redis": "connected", "waiting": waiting, "reason": waiting}
        status = 503
    elif link.connected:
        body, status = {"state": "ready", "redis": "connected"}, 200
    else:
        down = "unknown" if link.connected is None else "down"
        body = {"state": "not_ready", "redis": down, "reason": _unreachable(link)}
        status = 503
    if link.eviction_policy:
        from daemon.status import eviction_warning

        body["eviction_policy"] = link.eviction_policy
        if warning := eviction_warning(link.eviction_policy):
            body["warning"] = warning
    return status, body


def _unreachable(link: LinkState) -> str:
    if link.connected is None:
        return "Redis not reached yet"
    since = "" if link.down_since is None else f" for {link.clock() - link.down_since:.1f} s"
    return f"Redis unreachable{since} ({link.failures} failed attempts)"


class _Reachability:
    """When Redis was last reached after an outage (a LinkState listener; monotonic)."""

    def __init__(self, link: LinkState, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.up_since: float | None = clock() if link.connected else None
        link.listeners.append(self.changed)

    def changed(self, up: bool) -> None:
        self.up_since = self.clock() if up else None

    def seconds(self) -> float | None:
        up = self.up_since
        return None if up is None else self.clock() - up


# -- the server -------------------------------------------------------------------------------
_registered: QueueDepthCollector | None = None


def _register(collector: QueueDepthCollector | None) -> None:
    """Serve `collector` on /metrics (replacing one registered before in this process)."""
    global _registered
    if _registered is not None:
        metrics.registry().unregister(_registered)
        _registered = None
    if collector is not None:
        metrics.registry().register(collector)
        _registered = collector


def serve_metrics(
    settings: Settings, progress: Progress, link: LinkState, log: Any
) -> ThreadingHTTPServer:
    """Start the HTTP server thread; returns the server (its port is server_address[1]).

    Depths are exported for `settings.queues`, the queues this process consumes: a process
    that consumes none (a subscriber without --durable) is given settings with no queues and
    reads nothing from Redis at scrape time.
    """
    _register(QueueDepthCollector(settings) if settings.queues else None)
    reach = _Reachability(link)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry()), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(*health(progress, settings, link, reach.seconds()))
            elif path == "/readyz":
                self._json(*readiness(link, progress.waiting))
            else:
                self._json(
                    404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}
                )

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return  # scrapes are not news

    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port={settings.metrics_port} on {settings.metrics_host}: cannot listen "
            f"({exc.strerror}); expected a free port"
        ) from None
    server.daemon_threads = True
    server.timeout = 5
    # A death of the server loop is logged, counted and recorded in progress.dead_helpers,
    # never silent (the only symptom would otherwise be a refused scrape).
    GuardedThread("http", progress, log, target=server.serve_forever).start()
    log.info("metrics.serving", host=settings.metrics_host, port=server.server_address[1])
    return server
