"""The bench task as a Celery app: ``celery -A bench_peers.celery_app worker -Q bench ...``."""

from __future__ import annotations

from celery import Celery

from bench_peers import URL, work

app = Celery("bench", broker=URL)
app.conf.update(
    task_ignore_result=True,  # no result backend: the task's only effect is the count
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.work")
def task(sent_at: float | None = None) -> None:
    """The bench task."""
    work(sent_at)
