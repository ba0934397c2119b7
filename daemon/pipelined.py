"""Several commands written at once on one pooled connection, each reply kept as it is read.

redis-py's pipeline object costs more client CPU than the round trip it saves (and a Script
in a pipeline adds a SCRIPT EXISTS trip); the reliable queue's ack+claim pair is written this
way instead. Errors are handled as redis-py's own pipeline does; what was read stays known
when the connection breaks half way (the reliable queue reconciles on that knowledge).
"""

from __future__ import annotations

from typing import Any

import redis


class ReplyLost(Exception):
    """A reply that never arrived (the connection broke after the earlier ones were read)."""


def send_at_once(pool: Any, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """Write `commands` at once, read their replies; error replies come back as values.

    A connection that breaks before the first reply raises; one that breaks after it
    yields `ReplyLost` for each reply not read.
    """
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
                lost = ReplyLost(f"{type(exc).__name__}: {exc}")
                return replies + [lost] * (len(commands) - len(replies))
        return replies
    except BaseException:
        conn.disconnect()  # a half-read reply must not reach the next caller
        raise
    finally:
        pool.release(conn)
