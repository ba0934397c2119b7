"""Free loopback ports for the processes that tests, the soak and the benchmark start.

Ports come from below the kernel's ephemeral range (32768+): a port that `bind(0)` hands out
can be given again at once as the local port of some outgoing connection, which would then
collide with the server about to listen on it. Never 6379.
"""

from __future__ import annotations

import random
import socket

SINGLE = (20000, 30000)  # free_port()
BLOCKS = (300, 320)  # free_port_block(): prefixes P, ports P*100 .. P*100+99 (30000-31999)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody uses right now."""
    for _ in range(1000):
        port = random.randrange(*SINGLE)
        if _bindable(port):
            return port
    raise OSError("no free loopback port in 20000-29999")


def free_port_block(count: int) -> int:
    """A prefix P whose ports P*100 .. P*100+count-1 are all free (a base + process number)."""
    for _ in range(300):
        prefix = random.randrange(*BLOCKS)
        if all(_bindable(prefix * 100 + n) for n in range(count)):
            return prefix
    raise OSError(f"no free block of {count} loopback ports in 30000-31999")
