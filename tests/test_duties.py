"""When the consumer's recurring duties fall due, turn by turn on a fake clock."""

from __future__ import annotations

from typing import Any

import structlog

from daemon import config
from daemon.duties import IDLE_BEAT_MARGIN, Duties
from daemon.faults import LinkState, make_backoff
from daemon.keys import QueueKeys


class Recorder:
    """Stands in for a ReliableQueue: records when each duty reached it."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.beats: list[float] = []
        self.promotions: list[float] = []
        self.client = self  # the idle look for delayed tasks: "something is delayed"
        self.keys = QueueKeys("jobs")

    def exists(self, key: object) -> int:
        return 1

    def heartbeat(self, ttl: float) -> None:
        self.beats.append(self.clock[0])

    def promote_due(self) -> int:
        self.promotions.append(self.clock[0])
        return 0


def _duties(held: list[Any], **values: str) -> tuple[Duties, Recorder, list[float]]:
    settings = config.load({"queues": ["jobs"], "worker_id": "w", **values}, env={})
    now = [0.0]
    queue = Recorder(now)
    # never connected: no recovery look (not what these tests check), so no Recovery either
    link = LinkState(make_backoff(settings), structlog.get_logger())
    duties = Duties(
        settings,
        [queue],
        None,
        link,
        lambda: held,
        lambda: now[0],  # type: ignore[arg-type]
        structlog.get_logger(),
    )
    duties.beaten(0.0)  # as at startup
    return duties, queue, now


def _turns(duties: Duties, now: list[float], every: float, until: float) -> None:
    while now[0] + every <= until:
        now[0] += every
        duties.run(now[0])


def test_idle_worker_beats_seldom_but_never_closer_than_the_margin_to_its_ttl() -> None:
    duties, queue, now = _duties([], block_timeout="5")  # TTL 15 s
    _turns(duties, now, 5.0, 60.0)  # idle: one turn per blocking claim
    beats = [0.0, *queue.beats]
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    assert gaps and all(gap == 10.0 for gap in gaps), beats  # every other turn, not every one
    assert all(gap <= 15.0 - IDLE_BEAT_MARGIN for gap in gaps)  # renewed in time, with margin
    assert queue.promotions == [5.0 * n for n in range(1, 13)]  # promotion: every turn still


def test_worker_holding_tasks_beats_every_second() -> None:
    duties, queue, now = _duties([object()], block_timeout="5")
    _turns(duties, now, 0.25, 5.0)
    assert queue.beats == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_short_ttls_keep_the_beat_of_every_turn() -> None:
    duties, queue, now = _duties([], block_timeout="0.5")  # TTL 1.5 s: no room to stretch
    _turns(duties, now, 0.5, 3.0)
    assert queue.beats == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
