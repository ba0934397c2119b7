"""The per-process HTTP server: /metrics, /healthz, /readyz, on its own thread.

It never blocks the consume loop: it reads the progress clock and link state (thread-safe)
and, at scrape time, the queue depths from Redis with a short deadline of their own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon import metrics
from daemon.config import ConfigError, Settings
from daemon.connection import LinkState
from daemon.liveness import Progress, stall_reason

SCRAPE_DEADLINE = 1.0  # seconds the depth query may take before the scrape goes on without it


class QueueDepthCollector(Collector):
    """`taskd_queue_depth{queue,state}` read from Redis at scrape time, with a short deadline."""

    def __init__(self, settings: Settings) -> None:
        import dataclasses

        from daemon.connection import make_client

        quick = dataclasses.replace(
            settings,
            socket_timeout=SCRAPE_DEADLINE,
            connect_timeout=SCRAPE_DEADLINE,
            block_timeout=SCRAPE_DEADLINE / 2,
        )
        self.client = make_client(quick, client_name=f"taskd-metrics:{settings.worker_id}")
        self.queues = settings.queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from daemon.status import queue_status

        depth = GaugeMetricFamily(
            "taskd_queue_depth", "Tasks per queue and state", labels=["queue", "state"]
        )
        alive = GaugeMetricFamily(
            "taskd_queue_workers_alive", "Workers with a live heartbeat per queue", labels=["queue"]
        )
        for queue in self.queues:
            try:
                st = queue_status(self.client, queue)
            except Exception:  # noqa: BLE001 - a scrape must answer even when Redis cannot
                continue
            for state in ("pending", "processing", "delayed", "dead"):
                depth.add_metric([queue, state], getattr(st, state))
            alive.add_metric([queue], sum(1 for w in st.workers if w["alive"]))
        yield depth
        yield alive


def health(progress: Progress, settings: Settings) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz: 503 with the reason once the loop is stuck."""
    snap = progress.snapshot()
    reason = stall_reason(snap, settings.stall_timeout, settings.task_timeout)
    body = {"state": "stalled" if reason else "ok", **snap.as_dict()}
    if reason:
        body["reason"] = reason
    return (503 if reason else 200), body


def readiness(link: LinkState) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /readyz: 503 while Redis is unreachable."""
    if link.connected:
        return 200, {"state": "ready", "redis": "connected"}
    return 503, {"state": "not_ready", "redis": "unknown" if link.connected is None else "down"}


def serve_metrics(
    settings: Settings, progress: Progress, link: LinkState, log: Any
) -> ThreadingHTTPServer:
    """Start the HTTP server thread; returns the server (its port is server_address[1])."""
    metrics.registry().register(QueueDepthCollector(settings))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry()), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(*health(progress, settings))
            elif path == "/readyz":
                self._json(*readiness(link))
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
    thread = threading.Thread(target=server.serve_forever, name="taskd-http", daemon=True)
    thread.start()
    log.info("metrics.serving", host=settings.metrics_host, port=server.server_address[1])
    return server
