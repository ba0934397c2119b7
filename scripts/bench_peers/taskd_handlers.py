"""taskd handlers for the bench: ``--handler bench_peers.taskd_handlers:task`` (or ``:atask``)."""

from __future__ import annotations

from bench_peers import awork, sent_at_of, work


def task(body: bytes) -> None:
    """The bench task as a plain taskd handler."""
    work(sent_at_of(body))


async def atask(body: bytes) -> None:
    """The bench task as an ``async def`` taskd handler."""
    await awork(sent_at_of(body))
