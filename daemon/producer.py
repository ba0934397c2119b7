"""Putting tasks into Redis: the same keys and deadlines the consumers use.

Producers LPUSH onto the queue (as the seed's producers did; here inside a script that also
stamps the enqueue time), so any existing producer keeps working next to these functions.

With `wait_replicas`, each push is followed by `WAIT n timeout` on the same connection (one
pipeline, so a pooled client cannot send the WAIT on another connection, where it would count
nothing). Redis acknowledges a push before any replica has it: a master that dies then takes
the task with it. WAIT narrows that window to "fewer replicas confirmed than asked", which the
caller is told about (ReplicasNotConfirmed); it does not make the push atomic with replication.
The client's socket timeout must exceed `wait_timeout`, or the WAIT itself times out.

Delayed tasks (`delay=`) go into the queue's delayed set (``Q:delayed``), the same sorted set
the consumers' retries use: member = a random token of TOKEN_CHARS hex characters + the body,
score = the due time on Redis's clock (TIME inside the script, so a producer whose clock is off
still schedules right). Every consumer's promote step moves due members back to the pending
list, where they are claimed next. This needs EVALSHA (and SCRIPT LOAD), TIME, ZADD and ZCARD.

Enqueue stamps: enqueue, enqueue_many and enqueue_delayed also record when each task was
enqueued, in the queue's stamps set (``Q:stamps``: member = SHA-1 of the body, score = Redis's
TIME; a delayed task is stamped with its due time), in the same script as the push, so the
body handlers receive is unchanged. `taskd status` and the consumers' metrics read the age of
the oldest pending task from it. ZADD NX: identical bodies share one stamp, the earliest.
Stamps older than STAMP_KEEP are dropped by the same script (at about one push in TRIM_EVERY,
and at every batch of enqueue_many), so the stamps of tasks removed by hand (DEL, LREM) do
not pile up. A push costs one EVALSHA instead of one LPUSH (plus
ZADD and ZREMRANGEBYSCORE rights); producers that LPUSH by themselves still work, their
tasks just have no age. `publish --durable` is not stamped.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from daemon import lua
from daemon.cluster import node_client
from daemon.keys import QueueKeys, durable_queue, shard_names
from daemon.reliable import TOKEN_BYTES, digest

BATCH = 1000
MAX_DELAY = 365 * 86400.0  # a year: longer is a mistake, and stays far inside a double's precision
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
DELAY_EXPECTED = "a duration >= 0 such as 500ms, 30s, 5m, 1h or plain seconds, at most a year"

# Stamps older than this are dropped at each push: a week, far beyond any queue that drains.
STAMP_KEEP = 7 * 86400.0

# A push trims old stamps with probability n / TRIM_EVERY (every batch of enqueue_many): the
# trim costs about as much Redis CPU as the rest of a single push, and a stale stamp only has
# to go eventually.
TRIM_EVERY = 64

# The scripts (daemon/lua/push.lua, add_delayed.lua) say how they push, stamp and trim.
_PUSH = lua.script("push")
_ADD_DELAYED = lua.script("add_delayed")


class ReplicasNotConfirmed(Exception):
    """The push is stored on the master, but fewer replicas than asked confirmed it in time.

    The task is NOT lost yet and NOT safe yet: it is gone only if the master fails before it
    replicates. Pushing it again may store it twice.
    """

    def __init__(self, confirmed: int, wanted: int, timeout: float, pushed: int = 1) -> None:
        self.confirmed = confirmed
        self.wanted = wanted
        self.timeout = timeout
        self.pushed = pushed
        super().__init__(
            f"replication not confirmed: {confirmed} of {wanted} replica(s) acknowledged "
            f"within {timeout:g} s (WAIT)"
        )


class PushStopped(Exception):
    """enqueue_many stopped early; `pushed` tasks (the first ones given) are on the queue.

    `cause` is what stopped it: a RedisError, ReplicasNotConfirmed (its batch was pushed and
    is counted), or an error raised while reading the bodies.
    """

    def __init__(self, pushed: int, cause: BaseException) -> None:
        self.pushed = pushed
        self.cause = cause
        super().__init__(f"stopped after {pushed} pushed: {cause}")


@dataclass(frozen=True)
class Scheduled:
    """Where delayed tasks went: the delayed set's size after the add, the due time (Redis
    clock, Unix seconds) and the delay asked for."""

    delayed: int
    due_at: float
    delay: float


def parse_delay(value: object) -> float:
    """Seconds from a delay: a number, or a duration string ("500ms", "30s", "5m", "1h", "30").

    Raises ValueError naming the value and what was expected (the CLI's exit 78, the web's 400).
    A bool is refused: JSON `true` is not a duration.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        if match:
            seconds = float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]
    if seconds is None or not 0 <= seconds <= MAX_DELAY:  # also refuses nan and inf
        raise ValueError(f"delay {value!r}: expected {DELAY_EXPECTED}")
    return seconds


def _as_bytes(body: bytes | str) -> bytes:
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _batches(bodies: Iterable[bytes | str], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for body in bodies:
        batch.append(_as_bytes(body))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def wait_ms(timeout: float) -> int:
    """WAIT's timeout in milliseconds; never 0, which would make WAIT block for ever."""
    return max(1, math.ceil(timeout * 1000))


def _push_and_wait(
    client: Any, queue: str, batch: list[bytes], wait_replicas: int, wait_timeout: float
) -> int:
    """LPUSH `batch` and stamp it (one script), then WAIT on the same connection; the depth.

    Raises ReplicasNotConfirmed (with pushed=len(batch)) when fewer replicas confirm.
    """
    script = client.register_script(_PUSH.source)
    keys = QueueKeys(queue)
    trim = os.urandom(1)[0] * TRIM_EVERY < 256 * len(batch)  # probability len(batch) / 64
    args = [repr(STAMP_KEEP) if trim else "", len(batch), *batch, *(digest(b) for b in batch)]
    _PUSH.check(2, len(args))
    if not wait_replicas:
        return int(script(keys=[keys.pending, keys.stamps], args=args))
    client = node_client(client, queue)  # the WAIT on the push's connection (cluster: node)
    script = client.register_script(_PUSH.source)
    pipe = client.pipeline(transaction=False)
    script(keys=[keys.pending, keys.stamps], args=args, client=pipe)
    pipe.wait(wait_replicas, wait_ms(wait_timeout))
    depth, confirmed = pipe.execute()
    if int(confirmed) < wait_replicas:
        raise ReplicasNotConfirmed(int(confirmed), wait_replicas, wait_timeout, len(batch))
    return int(depth)


def _schedule_and_wait(
    client: Any,
    queue: str,
    batch: list[bytes],
    delay: float,
    wait_replicas: int,
    wait_timeout: float,
) -> Scheduled:
    """Add `batch` to the delayed set, due `delay` seconds from now on Redis's clock; WAIT after.

    Each member gets its own random token: identical bodies stay separate tasks.
    """
    members = [os.urandom(TOKEN_BYTES).hex().encode("ascii") + body for body in batch]
    script = client.register_script(_ADD_DELAYED.source)
    keys = [QueueKeys(queue).delayed, QueueKeys(queue).stamps]
    args = [repr(delay), repr(STAMP_KEEP), len(batch), *members, *(digest(b) for b in batch)]
    _ADD_DELAYED.check(len(keys), len(args))
    if not wait_replicas:
        size, due = script(keys=keys, args=args)
        return Scheduled(int(size), float(due), delay)
    client = node_client(client, queue)  # the WAIT on the push's connection (cluster: node)
    script = client.register_script(_ADD_DELAYED.source)
    pipe = client.pipeline(transaction=False)
    script(keys=keys, args=args, client=pipe)
    pipe.wait(wait_replicas, wait_ms(wait_timeout))
    (size, due), confirmed = pipe.execute()
    if int(confirmed) < wait_replicas:
        raise ReplicasNotConfirmed(int(confirmed), wait_replicas, wait_timeout, len(batch))
    return Scheduled(int(size), float(due), delay)


def enqueue_delayed(
    client: Any,
    queue: str,
    body: bytes | str,
    delay: float | str,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
) -> Scheduled:
    """Schedule one task to be pushed onto `queue` once `delay` (seconds or "30s") has passed.

    Raises ValueError for a bad delay, before anything is sent. A delay of 0 still goes
    through the delayed set (due at once); `enqueue` pushes directly instead.
    """
    seconds = parse_delay(delay)
    return _schedule_and_wait(
        client, queue, [_as_bytes(body)], seconds, wait_replicas, wait_timeout
    )


def enqueue(
    client: Any,
    queue: str,
    body: bytes | str,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
    delay: float | str | None = None,
) -> int:
    """Push one task; returns the queue depth after the push.

    With `delay` (seconds, or a duration string "500ms", "30s", "5m", "1h"), the task waits in
    the delayed set until then and the size of that set is returned; a bad delay raises
    ValueError. A delay of 0 (or None) pushes at once.
    With `wait_replicas` > 0, raises ReplicasNotConfirmed when fewer replicas confirm the push
    within `wait_timeout` seconds (the task is on the master all the same).
    """
    seconds = 0.0 if delay is None else parse_delay(delay)
    if seconds > 0:
        batch = [_as_bytes(body)]
        return _schedule_and_wait(
            client, queue, batch, seconds, wait_replicas, wait_timeout
        ).delayed
    return _push_and_wait(client, queue, [_as_bytes(body)], wait_replicas, wait_timeout)


class ShardCycle:
    """The shard of each queue a single push goes to: every shard in turn, from a random one
    (so producers that push one task each still spread). Safe to share between threads."""

    def __init__(self, queues: Iterable[str], shards: int) -> None:
        self._names = {queue: shard_names(queue, shards) for queue in queues}
        self._turns = itertools.count(int.from_bytes(os.urandom(2), "big"))

    def next(self, queue: str) -> str:
        """The shard of `queue` (a queue it was made for) the next push goes onto."""
        names = self._names[queue]
        return names[next(self._turns) % len(names)]


def _onto_shards(
    batches: Iterable[list[bytes]], shards: Sequence[str]
) -> Iterator[tuple[str, list[bytes]]]:
    """Each batch cut into one run of consecutive tasks per shard, the shards in turn from a
    random one: the tasks spread evenly, and what was pushed when a push fails is still
    the first ones given (the runs are pushed in order)."""
    turn = int.from_bytes(os.urandom(2), "big")
    for batch in batches:
        size = math.ceil(len(batch) / len(shards))
        for start in range(0, len(batch), size):
            yield shards[turn % len(shards)], batch[start : start + size]
            turn += 1


def enqueue_many(
    client: Any,
    queue: str,
    bodies: Iterable[bytes | str],
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
    delay: float | str | None = None,
    shards: int = 1,
) -> int:
    """Push tasks in order (the first given is consumed first), in pipelined batches.

    With `shards` > 1 the tasks are spread over the shards of `queue` (keys.shard_names),
    each shard in turn getting a run of consecutive tasks; the order holds within a shard.

    Returns how many were pushed. Each batch is one script call (LPUSH and stamps): all of it
    is stored or none (on a timeout, unknown). Anything that stops it mid-way raises
    PushStopped saying how many were pushed before; with `wait_replicas`, an unconfirmed
    batch stops it too (counted as pushed).
    With `delay` > 0 each batch goes into the delayed set instead (one script call), due
    `delay` after that batch was stored; tasks due together run in no guaranteed order.
    A bad delay raises ValueError before anything is sent.
    """
    seconds = 0.0 if delay is None else parse_delay(delay)
    pushed = 0
    try:
        for target, batch in _onto_shards(_batches(bodies, BATCH), shard_names(queue, shards)):
            try:
                if seconds > 0:
                    _schedule_and_wait(client, target, batch, seconds, wait_replicas, wait_timeout)
                else:
                    _push_and_wait(client, target, batch, wait_replicas, wait_timeout)
            except ReplicasNotConfirmed as exc:
                pushed += exc.pushed
                raise
            pushed += len(batch)
    except Exception as exc:
        raise PushStopped(pushed, exc) from exc
    return pushed


def publish(
    client: Any,
    channel: str,
    body: bytes | str,
    durable: bool = False,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
) -> int:
    """Publish one message; returns how many subscribers received it (0: it is gone).

    With `durable`, the message is also pushed onto the channel's durable list (one atomic
    MULTI), where `taskd subscribe --durable` consumes it reliably; `wait_replicas` then waits
    for that push to replicate (a plain PUBLISH stores nothing, so there is nothing to wait for).
    """
    if not durable:
        return int(client.publish(channel, _as_bytes(body)))
    client = node_client(client, durable_queue(channel))  # MULTI on the list's node (cluster)
    if not wait_replicas:
        pipe = client.pipeline(transaction=True)
        pipe.lpush(durable_queue(channel), _as_bytes(body))
        pipe.publish(channel, _as_bytes(body))
        return int(pipe.execute()[1])
    # MULTI/EXEC spelled out in a plain pipeline: WAIT must follow EXEC on the same
    # connection, and a WAIT queued inside MULTI would not block.
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("MULTI")
    pipe.lpush(durable_queue(channel), _as_bytes(body))
    pipe.publish(channel, _as_bytes(body))
    pipe.execute_command("EXEC")
    pipe.wait(wait_replicas, wait_ms(wait_timeout))
    replies = pipe.execute()
    for reply in replies[3]:  # EXEC's replies: an error inside it is not raised by execute()
        if isinstance(reply, Exception):
            raise reply
    receivers, confirmed = int(replies[3][1]), int(replies[4])
    if confirmed < wait_replicas:
        raise ReplicasNotConfirmed(confirmed, wait_replicas, wait_timeout)
    return receivers
