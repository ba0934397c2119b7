"""The reliable-queue operations on Redis: claim, ack, retry, dead-letter, recover.

Every operation that moves a task between two keys is one atomic step (a Lua script or a
MULTI transaction), so a crash between two commands can never leave a task in no key at all.
The task body is stored exactly as the producer pushed it; the attempt counter of a task is
kept under the SHA-1 of its body (two tasks with identical bodies share one counter).

Enqueue stamps (``Q:stamps``, written by daemon.producer, member = the same SHA-1): a task
that leaves for good (acked, dead-lettered) takes its stamp with it, inside the same script;
retries, promotion and recovery keep it (the age counts from the first enqueue); a requeued
dead letter is stamped anew. Identical bodies share one stamp, as they share one counter.

Redis full (maxmemory reached, noeviction): every script only moves or removes data, or adds
a bounded few bytes (an attempt counter, a delayed-set token, a dead-letter document whose
error text is capped), so they may run when Redis refuses writes: on Redis >= 7 they are
declared `#!lua flags=allow-oom`; on 6.2 they run as plain scripts whose first write removes
or expires something, which Redis's legacy rule lets finish under OOM (see `use_allow_oom`).

One worker id, one process: the worker's heartbeat key holds its owner record (see
daemon/ownership.py); the scripts that touch the worker's own processing list first check
that the key still holds this process's record (or nothing), atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from daemon.connection import RedisFatalError
from daemon.keys import QueueKeys
from daemon.ownership import Owner

TOKEN_BYTES = 8  # random prefix of a delayed member, so identical bodies never collapse
TOKEN_CHARS = TOKEN_BYTES * 2
MAX_ERROR_CHARS = 2000  # of a handler's error text kept in a dead letter: bounded growth
ALLOW_OOM = "#!lua flags=allow-oom\n"
LOST = -2  # what a script returns when the worker id is held by another process

# The owner check every script on our own list starts with: our record, or none (expired
# after an outage: nobody else holds the id, so the list is still ours to settle).
_OWNED = """
local holder = redis.call('GET', KEYS[{alive}])
if holder and holder ~= ARGV[{owner}] then return {{-2, holder}} end
"""

# Moves every task of a processing list back to the front of the pending list (in claim
# order), or, when its attempts reach the maximum, into the `holder` processing list, from
# where the caller dead-letters it. With ARGV[2] == '1' it does nothing while the owner's
# heartbeat key exists, and forgets the owner once its list is empty: several recoverers on
# several hosts may race for the same dead worker safely. With ARGV[2] == '0' (our own list)
# it does nothing when the id is held by another process.
_RECOVER = """
-- KEYS: source, pending, attempts, holder, alive, workers
-- ARGV: max_attempts, only_if_dead, count_attempt, worker, keep ('' or a body to leave),
--       keep?, owner
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return {-1, {}} end
if ARGV[2] == '0' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[7] then return {-2, {holder}} end
end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
local returned, doomed = 0, {}
local keep = ARGV[6] == '1'
for _, body in ipairs(items) do
  local n = 0
  if keep and body == ARGV[5] then
    redis.call('LPUSH', KEYS[1], body)  -- the task its worker holds: not lost, not returned
    keep = false
  else
    if ARGV[3] == '1' then
      n = redis.call('HINCRBY', KEYS[3], redis.sha1hex(body), 1)
    end
    if n >= tonumber(ARGV[1]) then
      redis.call('LPUSH', KEYS[4], body)
      table.insert(doomed, body)
    else
      redis.call('RPUSH', KEYS[2], body)
      returned = returned + 1
    end
  end
end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[6], ARGV[4]) end
return {returned, doomed}
"""

# Ack: the task leaves the processing list, its attempt counter and enqueue stamp are
# dropped; returns whether it was still ours and how many attempts had failed before.
_ACK = (
    "-- KEYS: processing, attempts, alive, stamps   ARGV: body, digest, owner"
    + _OWNED.format(alive=3, owner=3)
    + """
local failures = redis.call('HGET', KEYS[2], ARGV[2])
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if failures then redis.call('HDEL', KEYS[2], ARGV[2]) end
if removed == 1 then redis.call('ZREM', KEYS[4], ARGV[2]) end
return {removed, tonumber(failures) or 0}
"""
)

# A failed attempt, in one step: count it, then schedule the retry (delay doubling from
# retry_base, capped) or, at the last attempt, dead-letter it (the JSON document gets the
# final count). Nothing happens when the task is no longer in the processing list, so the
# count can never be taken twice for one failure.
_FAIL = (
    """-- KEYS: processing, attempts, delayed, dead, alive, stamps
-- ARGV: body, digest, max_attempts, retry_base, retry_cap, token, entry (JSON), owner"""
    + _OWNED.format(alive=5, owner=8)
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return {-1, 0, '0'} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if n >= tonumber(ARGV[3]) then
  local doc = cjson.decode(ARGV[7])
  doc['attempts'] = n
  redis.call('LPUSH', KEYS[4], cjson.encode(doc))
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  return {1, n, '0'}
end
local delay = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (n - 1))
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[3], now + delay, ARGV[6] .. ARGV[1])
return {0, n, tostring(delay)}
"""
)

_DEAD_LETTER = (
    "-- KEYS: processing, dead, attempts, alive, stamps   ARGV: body, entry, digest, owner"
    + _OWNED.format(alive=4, owner=4)
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return {0} end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
return {1}
"""
)

_PROMOTE = """
-- KEYS: delayed, pending   ARGV: limit, token_chars
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('RPUSH', KEYS[2], string.sub(member, tonumber(ARGV[2]) + 1))
end
return #due
"""

# Back from the dead letters: pending again from now on (stamped anew, Redis's clock).
_REQUEUE_DEAD = """
-- KEYS: dead, pending, stamps   ARGV: entry, body, digest
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], 'NX', tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[3])
return 1
"""

# The claim of a full Redis (LMOVE and BLMOVE are refused under OOM): a removal first, so a
# 6.2 server lets the push follow. Non-blocking: the caller polls while Redis is full.
_CLAIM = """
-- KEYS: pending, processing
local body = redis.call('RPOP', KEYS[1])
if body then redis.call('LPUSH', KEYS[2], body) end
return body
"""

# Startup: take the worker id when nobody holds it, we do, or the holder is the record the
# caller found dead (ARGV[3]); otherwise return the holder's record.
_TAKE = """
-- KEYS: alive   ARGV: owner, ttl_ms, replace ('' or the dead holder's record)
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and (ARGV[3] == '' or holder ~= ARGV[3]) then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Heartbeat: renew the id only while it is ours (an expiry first, so 6.2 lets the ZADD follow
# under OOM); an id that expired meanwhile (an outage) and nobody took is taken again.
_HEARTBEAT = """
-- KEYS: alive, workers   ARGV: owner, ttl_ms, now, worker
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
if holder then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return false
"""

# Clean stop (or giving back an id not used): say goodbye, but only for an id that is still
# ours. The worker stays registered while its processing list holds anything (a killed
# predecessor's task): the registry is how peers find that list to recover it.
_FORGET = """
-- KEYS: alive, workers, processing   ARGV: owner, worker
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
"""


class _ReplyLost(Exception):
    """A reply that never arrived (the connection broke after the earlier ones were read)."""


class WorkerIdLost(RedisFatalError):
    """Another process holds our worker id: stop without touching its processing list."""


def digest(body: bytes) -> str:
    """The attempt-counter field of a task (matches Lua's redis.sha1hex)."""
    return hashlib.sha1(body).hexdigest()  # noqa: S324 - an identifier, not security


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` as valid UTF-8 (lone surrogates backslash-escaped), cut to `limit` characters.

    Handler errors may carry surrogate-escaped file names: encoding them would raise.
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more characters]"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_entry(
    body: bytes, error: str, attempts: int, worker: str, failed_at: float
) -> bytes:
    """The JSON document stored in ``Q:dead``; the body is base64 when it is not UTF-8.

    The error text is capped (MAX_ERROR_CHARS): a full Redis must not fill further with it.
    """
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    doc = {
        "body": text,
        "body_encoding": encoding,
        "error": safe_text(error, MAX_ERROR_CHARS),
        "attempts": attempts,
        "worker": safe_text(worker),
        "failed_at": failed_at,
    }
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def parse_dead_letter(entry: bytes) -> dict[str, Any]:
    """Decode a dead letter for display; never raises on foreign or damaged entries."""
    try:
        doc = json.loads(entry)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        return {"body": None, "error": f"unreadable dead letter ({exc})", "raw": entry[:200].hex()}
    return doc


def dead_letter_body(doc: dict[str, Any]) -> bytes | None:
    """The original task body of a decoded dead letter, or None when it cannot be rebuilt."""
    body = doc.get("body")
    if not isinstance(body, str):
        return None
    if doc.get("body_encoding") == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            return None
    return body.encode("utf-8")


@dataclass(frozen=True)
class Recovered:
    """Outcome of a recovery: tasks returned to pending, tasks now due for the dead letters."""

    returned: int
    doomed: list[bytes]
    skipped: bool = False  # the owner turned out to be alive


class ReliableQueue:
    """Reliable operations on one queue, for one worker, over one Redis client."""

    def __init__(
        self, client: redis.Redis, queue: str, worker: str, owner: Owner | None = None
    ) -> None:
        # redis-py's annotations are narrower than what it accepts (bytes values, float
        # timeouts), so the client is used untyped here.
        self.client: Any = client
        self.keys = QueueKeys(queue)
        self.worker = worker
        self.processing = self.keys.processing(worker)
        self.alive_key = self.keys.alive(worker)
        self.owner = owner or Owner.current()
        self.owner_record = self.owner.encode()
        self._ack_keys = [self.processing, self.keys.attempts, self.alive_key]
        self._ack_keys.append(self.keys.stamps)
        # Each script in two forms: plain (any server) and declared allow-oom (Redis >= 7).
        self._scripts = {
            name: (client.register_script(text), client.register_script(ALLOW_OOM + text))
            for name, text in (
                ("recover", _RECOVER),
                ("ack", _ACK),
                ("fail", _FAIL),
                ("dead", _DEAD_LETTER),
                ("promote", _PROMOTE),
                ("requeue_dead", _REQUEUE_DEAD),
                ("claim", _CLAIM),
                ("take", _TAKE),
                ("heartbeat", _HEARTBEAT),
                ("forget", _FORGET),
            )
        }
        self._flagged = 0
        # After each plain claim: True when Redis refused it as out of memory, False when it
        # was carried out; None after a scripted claim or a lost reply (no news on memory).
        self.claim_refused_oom: bool | None = None
        # After each ack_and_claim_next: True when the ack's reply came but the claim's was
        # lost (the connection broke between them): the claim may have moved a task in.
        self.claim_lost = False

    def use_allow_oom(self, flagged: bool) -> None:
        """Use the `#!lua flags=allow-oom` scripts (Redis >= 7.0; 6.2 cannot parse them)."""
        self._flagged = 1 if flagged else 0

    def preload(self) -> None:
        """Load the scripts of the form in use, in one round trip (after each (re)connect).

        Otherwise the first call of each after a start or a Redis restart costs a NOSCRIPT
        round trip (the first ack of every process among them). Best effort: a refused load
        (NOPERM) leaves that work to the NOSCRIPT fallback.
        """
        pipe = self.client.pipeline(transaction=False)
        for forms in self._scripts.values():
            pipe.script_load(forms[self._flagged].script)
        pipe.execute(raise_on_error=False)

    def _script(self, name: str) -> Any:
        return self._scripts[name][self._flagged]

    def _run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        return self._script(name)(keys=keys, args=args)

    def _check_owned(self, reply: Any) -> None:
        if isinstance(reply, list) and reply and reply[0] == LOST:
            holder = reply[1][0] if isinstance(reply[1], list) else reply[1]
            raise self.lost(holder)

    def lost(self, holder: Any) -> WorkerIdLost:
        """The error for finding our worker id held by `holder` (a record or raw bytes)."""
        found = Owner.parse(holder)
        who = found.describe() if found else f"an unknown holder ({holder!r:.60})"
        return WorkerIdLost(
            f"worker id {self.worker!r} of queue {self.keys.queue!r} was taken over by another "
            f"process ({who}); this process stops without touching that worker's processing "
            "list (expected one live process per --worker-id)"
        )

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, timeout: float) -> bytes | None:
        """Block up to `timeout` seconds for a task, moving it into this worker's list."""
        return self.client.blmove(self.keys.pending, self.processing, timeout, "RIGHT", "LEFT")

    def try_claim(self) -> bytes | None:
        """Claim without blocking (for serving several queues in priority order)."""
        return self.client.lmove(self.keys.pending, self.processing, "RIGHT", "LEFT")

    def claim_when_full(self) -> bytes | None:
        """Claim without blocking by an allow-oom script: works while Redis is out of memory."""
        return self._run("claim", [self.keys.pending, self.processing], [])

    # -- outcomes ---------------------------------------------------------------------------
    def ack(self, body: bytes) -> tuple[bool, int]:
        """Remove a finished task and its attempt counter, atomically (one Lua call).

        Returns (still ours, failed attempts before this success); "not ours" means a peer
        recovered the task while it ran. Raises WorkerIdLost when another process holds our id.
        """
        reply = self._run("ack", self._ack_keys, [body, digest(body), self.owner_record])
        self._check_owned(reply)
        removed, failures = reply
        return bool(removed), int(failures)

    def ack_and_claim_next(
        self, body: bytes, body_digest: str | None = None, *, scripted_claim: bool = False
    ) -> tuple[tuple[bool, int], bytes | None]:
        """Ack `body` and claim the next task without blocking, in one round trip.

        While the queue is busy this halves the round trips per task. If the ack's reply is
        lost, this raises (the ack may or may not have been applied). If only the claim's
        reply is lost, the ack's outcome is returned with no task and `claim_lost` is set:
        the caller has the lost-reply reconciliation return the claim, if it happened.
        `scripted_claim`: claim with the allow-oom script (Redis is full); otherwise
        `claim_refused_oom` tells whether the plain claim was refused as out of memory.
        """
        # Two commands written at once on one pooled connection: redis-py's pipeline object
        # costs more client CPU than the round trip it saves (and a Script in a pipeline adds
        # a SCRIPT EXISTS trip). Errors are handled as redis-py's own pipeline does.
        body_digest = body_digest or digest(body)
        claim: tuple[Any, ...] = ("LMOVE", self.keys.pending, self.processing, "RIGHT", "LEFT")
        if scripted_claim:
            claim = ("EVALSHA", self._script("claim").sha, 2, self.keys.pending, self.processing)
        ack = ("EVALSHA", self._script("ack").sha, len(self._ack_keys), *self._ack_keys)
        commands = ((*ack, body, body_digest, self.owner_record), claim)
        acked, following = self._send_pair(commands)
        self.claim_lost = isinstance(following, _ReplyLost)
        self.claim_refused_oom = None
        if not scripted_claim and not self.claim_lost:
            self.claim_refused_oom = isinstance(following, redis.exceptions.OutOfMemoryError)
        if isinstance(following, Exception):  # refused (OOM, READONLY...) or unknown: no task
            following = None
        if isinstance(acked, redis.exceptions.NoScriptError):  # e.g. Redis restarted
            acked = self._run("ack", self._ack_keys, [body, body_digest, self.owner_record])
        elif isinstance(acked, Exception):
            raise acked
        self._check_owned(acked)
        removed, failures = acked
        return (bool(removed), int(failures)), following

    def _send_pair(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Write `commands` at once, read their replies; error replies come back as values.

        A connection that breaks before the first reply raises; one that breaks after it
        yields `_ReplyLost` for each reply not read: what was read stays known.
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # an error reply: the connection is fine
                    replies.append(exc)
                except Exception as exc:
                    if not replies:
                        raise
                    conn.disconnect()  # a half-read reply must not reach the next caller
                    lost = _ReplyLost(f"{type(exc).__name__}: {exc}")
                    return replies + [lost] * (len(commands) - len(replies))
            return replies
        except BaseException:
            conn.disconnect()  # a half-read reply must not reach the next caller
            raise
        finally:
            pool.release(conn)

    def fail(
        self, body: bytes, entry: bytes, max_attempts: int, retry_base: float, retry_cap: float
    ) -> tuple[str, int, float]:
        """Settle a failed attempt atomically: ("retry", attempts, delay) or ("dead", ...).

        `entry` is the dead-letter document; its "attempts" is set to the final count.
        ("gone", 0, 0) when the task was no longer in this worker's processing list.
        """
        keys = [
            self.processing,
            self.keys.attempts,
            self.keys.delayed,
            self.keys.dead,
            self.alive_key,
            self.keys.stamps,
        ]
        token = os.urandom(TOKEN_BYTES).hex()
        args: list[Any] = [body, digest(body), max_attempts, retry_base, retry_cap, token, entry]
        reply = self._run("fail", keys, [*args, self.owner_record])
        self._check_owned(reply)
        outcome, attempts, delay = reply
        verdict = {-1: "gone", 0: "retry", 1: "dead"}[int(outcome)]
        return verdict, int(attempts), float(delay)

    def dead_letter(self, body: bytes, entry: bytes) -> bool:
        """Move the task from the processing list to the dead letters; False if it was gone."""
        keys = [self.processing, self.keys.dead, self.keys.attempts, self.alive_key]
        keys.append(self.keys.stamps)
        reply = self._run("dead", keys, [body, entry, digest(body), self.owner_record])
        self._check_owned(reply)
        return bool(reply[0])

    def promote_due(self, limit: int = 100) -> int:
        """Move delayed tasks whose time has come back to the front of the pending list."""
        return int(
            self._run("promote", [self.keys.delayed, self.keys.pending], [limit, TOKEN_CHARS])
        )

    # -- liveness and recovery --------------------------------------------------------------
    def take(self, ttl: float, replace: bytes = b"") -> bytes | None:
        """Take our worker id (SET NX, or over `replace`, a dead holder's record).

        Returns None when it is ours now, else the record of the process that holds it.
        """
        ttl_ms = max(1, int(ttl * 1000))
        return self._run("take", [self.alive_key], [self.owner_record, ttl_ms, replace])

    def heartbeat(self, ttl: float) -> None:
        """Say this worker is alive for `ttl` seconds; WorkerIdLost if another process holds it."""
        ttl_ms = max(1, int(ttl * 1000))
        args = [self.owner_record, ttl_ms, time.time(), self.worker]
        holder = self._run("heartbeat", [self.alive_key, self.keys.workers], args)
        if holder is not None:
            raise self.lost(holder)

    def forget_self(self) -> None:
        """On a clean stop: drop the heartbeat so peers and `status` see the worker gone.

        Only while the id is ours: the process that took it over keeps its heartbeat. A
        processing list that still holds tasks stays registered, for peers to recover.
        """
        keys = [self.alive_key, self.keys.workers, self.processing]
        self._run("forget", keys, [self.owner_record, self.worker])

    def return_own(
        self, max_attempts: int, count_attempt: bool, keep: bytes | None = None
    ) -> Recovered:
        """Return this worker's own processing list to pending.

        At start (`count_attempt=True`) what is there was held when the previous process died,
        so it counts as a failed attempt: a task that kills its worker ends in the dead letters.
        After a lost claim reply (`count_attempt=False`) the task was never seen: no attempt.
        `keep` is a task this worker holds and will handle (claimed with the last ack).
        Raises WorkerIdLost when another process holds our id.
        """
        return self._run_recover(
            self.worker, max_attempts, only_if_dead=False, count=count_attempt, keep=keep
        )

    def recover_worker(self, worker: str, max_attempts: int) -> Recovered:
        """Recover the processing list of `worker` if its heartbeat is gone (atomic)."""
        return self._run_recover(worker, max_attempts, only_if_dead=True, count=True)

    def _run_recover(
        self,
        worker: str,
        max_attempts: int,
        only_if_dead: bool,
        count: bool,
        keep: bytes | None = None,
    ) -> Recovered:
        keys = [
            self.keys.processing(worker),
            self.keys.pending,
            self.keys.attempts,
            self.processing,
            self.keys.alive(worker),
            self.keys.workers,
        ]
        args = [
            max_attempts,
            "1" if only_if_dead else "0",
            "1" if count else "0",
            worker,
            keep or b"",
            "1" if keep is not None else "0",
            self.owner_record,
        ]
        reply = self._run("recover", keys, args)
        self._check_owned(reply)
        returned, doomed = reply
        if returned == -1:
            return Recovered(0, [], skipped=True)
        return Recovered(int(returned), list(doomed))

    def known_workers(self) -> list[str]:
        """Workers registered for this queue (alive or not yet recovered)."""
        return [
            w.decode() if isinstance(w, bytes) else w
            for w in self.client.zrange(self.keys.workers, 0, -1)
        ]

    def dead_workers(self) -> list[str]:
        """Known workers other than this one whose heartbeat key is gone."""
        others = [w for w in self.known_workers() if w != self.worker]
        if not others:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker in others:
            pipe.exists(self.keys.alive(worker))
        return [w for w, alive in zip(others, pipe.execute(), strict=True) if not alive]

    def requeue_dead(self, entry: bytes, body: bytes) -> bool:
        """Move one dead letter back to the pending list as its original body."""
        keys = [self.keys.dead, self.keys.pending, self.keys.stamps]
        return bool(self._run("requeue_dead", keys, [entry, body, digest(body)]))
