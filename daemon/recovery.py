"""Giving tasks back: recovery of dead holders, reconciliation of lost claim replies, release.

Recover: the tasks of a holder that died (a peer whose heartbeat expired, or this worker id's
previous process, at start) go back to the queue, each counted as a failed attempt, so a
poison task cannot crash-loop a worker forever; at the maximum it is dead-lettered.
Reconcile: a claim whose reply was lost moved tasks into our processing list that we never
saw; everything there beyond the tasks we hold goes back, no attempt counted.
Release: at a drain, the tasks claimed ahead (--prefetch) and never started go back to the
queue front in their order, no attempt counted.
Orphan claims: a BLMOVE still blocked on a half-open connection would move a task into our
list after we gave up on it; such connections (ours only) are closed after an outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis

from daemon import metrics
from daemon.cluster import is_cluster
from daemon.dead_letters import dead_letter_entry
from daemon.inflight import Task
from daemon.reliable import ReliableQueue, digest


class Recovery:
    """Recovery and reconciliation for one consumer's queues."""

    def __init__(
        self,
        queues: list[ReliableQueue],
        worker: str,
        max_attempts: int,
        queue_metrics: dict[str, metrics.QueueMetrics],
        log: Any,
    ) -> None:
        self.queues = queues
        self.worker = worker
        self.max_attempts = max_attempts
        self.metrics = queue_metrics
        self.log = log

    def recover_own(self, queue: ReliableQueue) -> None:
        """At start: what our worker id's last process held, back to the queue (one attempt)."""
        recovered = queue.recover_own(self.max_attempts)
        if recovered.returned or recovered.doomed:
            self.log.warning(
                "recovery.own_tasks",
                queue=queue.keys.queue,
                returned=recovered.returned,
                dead_lettered=len(recovered.doomed),
                note="held when this worker last stopped; counted as a failed attempt",
            )
            self.metrics[queue.keys.queue].recovered.inc(recovered.returned + len(recovered.doomed))
        self.dead_letter_doomed(queue, recovered.doomed, self.worker)

    def recover_dead_peers(self) -> None:
        """Take back the tasks of every peer whose heartbeat expired (atomic per peer)."""
        for queue in self.queues:
            for worker in queue.dead_workers():
                recovered = queue.recover_worker(worker, self.max_attempts)
                if recovered.skipped:
                    continue
                total = recovered.returned + len(recovered.doomed)
                if total:
                    self.metrics[queue.keys.queue].recovered.inc(total)
                self.log.warning(
                    "recovery.dead_worker",
                    queue=queue.keys.queue,
                    dead_worker=worker,
                    returned=recovered.returned,
                    dead_lettered=len(recovered.doomed),
                )
                self.dead_letter_doomed(queue, recovered.doomed, worker)

    def dead_letter_doomed(self, queue: ReliableQueue, doomed: list[bytes], holder: str) -> None:
        """Tasks whose holder died once too often: each a failed attempt, now the last."""
        for body in doomed:
            entry = dead_letter_entry(
                body,
                f"worker {holder} stopped while handling the task "
                "(killed, crashed or hung past --task-timeout)",
                self.max_attempts,
                holder,
                time.time(),
            )
            if not queue.dead_letter(body, entry):
                self.log.warning(
                    "task.dead_letter_skipped",
                    queue=queue.keys.queue,
                    task=digest(body)[:12],
                    note="no longer in this worker's processing list; nothing was moved",
                )
                continue
            self.metrics[queue.keys.queue].dead_lettered.inc()
            self.log.error(
                "task.dead_lettered",
                queue=queue.keys.queue,
                task=digest(body)[:12],
                attempt=self.max_attempts,
                error="its worker died while handling it",
            )

    def holds_unseen(self, held: Iterable[Task]) -> bool:
        """Whether a processing list holds more than the tasks we know of (a lost claim
        reply): one LLEN per queue instead of a reconciliation script."""
        held = list(held)
        return any(
            int(queue.client.llen(queue.processing)) > sum(t.queue is queue for t in held)
            for queue in self.queues
        )

    def reconcile(self, why: str, held: Iterable[tuple[ReliableQueue, bytes]]) -> None:
        """Return claims whose reply never reached us; the tasks in `held` stay (each once)."""
        held = list(held)
        for queue in self.queues:
            keep = [body for q, body in held if q is queue]
            recovered = queue.reconcile(keep)
            if recovered.returned:
                self.log.warning(
                    "claim.reply_lost",
                    queue=queue.keys.queue,
                    returned=recovered.returned,
                    why=why,
                    note="task moved to our processing list but the reply was lost; returned",
                )

    def release(self, unstarted: list[tuple[ReliableQueue, bytes]]) -> None:
        """A drain: tasks claimed ahead and never started go back to the queue front, in
        their order, with no attempt counted (they were never tried)."""
        for queue in self.queues:
            bodies = [body for q, body in unstarted if q is queue]
            if bodies:
                returned = queue.release_unstarted(bodies)
                self.log.info(
                    "claim.released",
                    queue=queue.keys.queue,
                    returned=returned,
                    note="claimed ahead and not started; back at the queue front, no attempt",
                )


class OrphanClaims:
    """Our own claim connections, by server-side id per node: the only ones we may close.

    On a single Redis there is one node; on a cluster each id is kept with the address of the
    node it was opened on (ids are per node), and closed there.
    """

    def __init__(self, client: redis.Redis, worker: str, log: Any) -> None:
        self.client = client
        self.name = f"taskd-claim:{worker}"
        self.log = log
        self.ids: dict[tuple[str, int], set[int]] = {}
        _track_connection_ids(client, self.ids)

    def kill(self) -> None:
        """Close our own claim connections the server still thinks are alive (half-open).

        Only connections this process opened (by server-side id): consumers of other queues
        may share our worker id, and so the connection name.
        """
        for address, ids in list(self.ids.items()):
            if ids:
                self._kill_on(_node_client(self.client, address), ids)

    def _kill_on(self, client: Any, ids: set[int]) -> None:
        if client is None:
            return
        try:
            me = client.client_id()
            listed = set()
            for info in client.client_list():
                cid = int(info.get("id", me))
                listed.add(cid)
                if cid in ids and cid != me and info.get("name") == self.name:
                    client.client_kill_filter(_id=str(cid))
                    self.log.info("redis.orphan_connection_closed", client_id=cid)
            ids.intersection_update(listed)  # forget connections long gone
        except redis.RedisError as exc:  # NOPERM under a strict ACL: the reconcile still works
            self.log.debug("redis.orphan_check_skipped", error=str(exc))


def _node_client(client: Any, address: tuple[str, int]) -> Any:
    """The client that talks to the node at `address`: `client` itself on a single Redis."""
    if not is_cluster(client):
        return client
    node = client.get_node(host=address[0], port=address[1])
    return client.get_redis_connection(node) if node is not None else None


def _track_connection_ids(client: Any, ids: dict[tuple[str, int], set[int]]) -> None:
    """Record the server-side id (CLIENT ID) of every connection `client` opens.

    Wraps the pool's connect hook (on a cluster, the cluster client's): one command per new
    connection, none per task. Where an ACL forbids CLIENT ID, nothing is recorded and no
    connection is ever closed.
    """
    cluster = is_cluster(client)
    if cluster:
        original = client.user_on_connect_func
    else:
        pool: Any = client.connection_pool
        original = pool.connection_kwargs.get("redis_connect_func")

    def connect(connection: Any) -> None:
        if original is not None:
            original(connection)
        elif not cluster:  # the cluster client has run on_connect already
            connection.on_connect()
        address = (str(getattr(connection, "host", "")), int(getattr(connection, "port", 0) or 0))
        try:
            connection.send_command("CLIENT", "ID")
            ids.setdefault(address, set()).add(int(connection.read_response()))
        except redis.ResponseError:
            pass

    if cluster:
        client.user_on_connect_func = connect
    else:
        pool.connection_kwargs["redis_connect_func"] = connect
