"""The seed's loop, as the seed ran it: ``body = r.blpop(q, 0)[1]; handler(body)``.

Not reliable (a task popped by a process that dies is lost) and it hangs on a dead link; it is
the baseline because it is what taskd replaces. ``python -m bench_peers.seed URL QUEUE``.
"""

from __future__ import annotations

import sys

import redis

from bench_peers.taskd_handlers import task


def main() -> None:
    """Pop and handle forever (the harness stops it with SIGTERM)."""
    url, queue = sys.argv[1], sys.argv[2]
    r = redis.Redis.from_url(url, socket_timeout=None)  # blpop(q, 0): wait forever
    while True:
        body = r.blpop([queue], 0)[1]
        task(body)


if __name__ == "__main__":
    main()
