"""What `taskd status` and `taskd dead` show: read-only views of the queue keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from daemon.keys import QueueKeys
from daemon.reliable import parse_dead_letter


@dataclass
class QueueStatus:
    """Depths of one queue and the workers that serve it."""

    queue: str
    pending: int
    processing: int
    delayed: int
    dead: int
    workers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def queue_status(client: Any, queue: str) -> QueueStatus:
    """Depths of pending/processing/delayed/dead and every known worker's state."""
    keys = QueueKeys(queue)
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.pending)
    pipe.zcard(keys.delayed)
    pipe.llen(keys.dead)
    pipe.zrange(keys.workers, 0, -1, withscores=True)
    pending, delayed, dead, workers = pipe.execute()
    processing_keys = [
        _text(k) for k in client.scan_iter(match=keys.processing_prefix + "*", count=500)
    ]
    holders = {k[len(keys.processing_prefix) :] for k in processing_keys}
    names = sorted({_text(w) for w, _ in workers} | holders)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.alive(name))
        pipe.llen(keys.processing(name))
    answers = pipe.execute()
    seen = {_text(w): score for w, score in workers}
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        rows.append(
            {
                "worker": name,
                "alive": bool(answers[2 * i]),
                "processing": int(answers[2 * i + 1]),
                "last_seen": seen.get(name),
            }
        )
    return QueueStatus(
        queue=queue,
        pending=int(pending),
        processing=sum(int(r["processing"]) for r in rows),
        delayed=int(delayed),
        dead=int(dead),
        workers=rows,
    )


def dead_letters(client: Any, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters, decoded; damaged entries are shown, never raised on."""
    entries = client.lrange(QueueKeys(queue).dead, 0, limit - 1)
    return [parse_dead_letter(e) for e in entries]
