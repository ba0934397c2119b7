"""The one test harness of taskd: used by tests/ and by the soak.

Real processes only: redis-server on free loopback ports (never 6379), supervisord from the
shipped conf, waits on observable state instead of sleeps.
"""

from tools.harness.memory import make_full, used_memory
from tools.harness.ports import free_port, free_port_block
from tools.harness.processes import end_process, kill9, pids_mentioning, spawn
from tools.harness.producer import Producer
from tools.harness.redis_server import RedisServer, RedisStartError
from tools.harness.waiting import StoppedHolding, WaitTimeout, poll_until, stays_true, wait_until

__all__ = [
    "Producer",
    "RedisServer",
    "RedisStartError",
    "StoppedHolding",
    "WaitTimeout",
    "end_process",
    "free_port",
    "free_port_block",
    "kill9",
    "make_full",
    "pids_mentioning",
    "poll_until",
    "spawn",
    "stays_true",
    "used_memory",
    "wait_until",
]
