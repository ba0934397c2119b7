"""The bench task as an RQ job function: ``rq worker -w rq.worker.SimpleWorker bench``."""

from __future__ import annotations

from bench_peers import work


def task(sent_at: float | None = None) -> None:
    """The bench task."""
    work(sent_at)
