"""The soak's constants, fault kinds, timings and bounds, and the Options of a run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tools/soak/settings.py

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNAVAILABLE = 69  # the stack could not be started or attached to
EXIT_CONFIG = 78  # bad flags: one line on stderr

MAX_SOCKET_PATH = 80  # longer run folders get supervisord's socket in a short temp folder
IDLE_GIVE_UP = 5.0  # seconds Redis may hold nothing while tasks are missing, at the end

DEFAULT_QUEUE = "task:prodcons:queue"
DEFAULT_CHANNEL = "task:pubsub:channel"
DEFAULT_HANDLER = "tools.soak.handler:handle"
SUBSCRIBER_HANDLER = "tools.soak.handler:handle"

BLACKHOLE = "blackhole"
RESET = "reset"
LATENCY = "latency"
REDIS_KILL = "redis-kill"
REDIS_STOP = "redis-stop"
CONSUMER_KILL = "consumer-kill"
CONSUMER_STOP = "consumer-stop"
FAIL_BURST = "fail-burst"
HANG = "hang"
OOM = "oom"
LONG_OUTAGE = "long-outage"
KINDS: tuple[str, ...] = (
    BLACKHOLE,
    RESET,
    LATENCY,
    REDIS_KILL,
    REDIS_STOP,
    CONSUMER_KILL,
    CONSUMER_STOP,
    FAIL_BURST,
    HANG,
    OOM,
    LONG_OUTAGE,
)
PROXY_KINDS = frozenset({BLACKHOLE, RESET, LATENCY})
REDIS_KINDS = frozenset({REDIS_KILL, REDIS_STOP})
# every consumer must reconnect or carry on
LINK_KINDS = PROXY_KINDS | REDIS_KINDS | frozenset({LONG_OUTAGE})
CONSUMER_KINDS = frozenset({CONSUMER_KILL, CONSUMER_STOP})
TASK_KINDS = frozenset({FAIL_BURST, HANG})

SIMULATES = {
    BLACKHOLE: "a NAT or firewall silently forgets every flow (no FIN, no RST)",
    RESET: "a failover or load-balancer restart resets every connection at once",
    LATENCY: "a slow, congested link (200 ms +/- 50 ms per direction)",
    REDIS_KILL: "Redis crashes (kill -9) and restarts from its AOF",
    REDIS_STOP: "Redis freezes (SIGSTOP: swap storm, long fork, DEBUG SLEEP)",
    CONSUMER_KILL: "a consumer is killed (kill -9: OOM killer, operator)",
    CONSUMER_STOP: "a consumer freezes as a whole (SIGSTOP): only the outside watchdog can act",
    FAIL_BURST: "a burst of tasks whose handler always raises (poison tasks)",
    HANG: "a task whose handler never returns (the stall detector must exit the process)",
    OOM: "Redis is full (maxmemory reached, noeviction) while producers keep pushing",
    LONG_OUTAGE: "Redis is down for days: thousands of reconnect attempts (a tiny backoff cap)",
}

# redis-py's FullJitterBackoff computed `base * 2 ** failures` and overflowed a float from the
# 1,024th failure on; a long outage that does not get past this many attempts proves nothing.
LONG_OUTAGE_MIN_ATTEMPTS = 1100
# The reconnect backoff of a stack whose schedule has a long outage: at the default one (0.2 s
# base, 5 s cap) thousands of attempts take hours; at 10 ms they take seconds.
LONG_OUTAGE_BACKOFF = (0.001, 0.01)
OOM_FILLER_KEY = "soak:oom-filler"  # a list of OOM_CHUNK-byte strings, deleted at the end
OOM_CHUNK = 64 * 1024


class UsageError(Exception):
    """A bad flag or value; str() is the one line shown before exit code 78."""


class StackError(Exception):
    """The stack could not be started or attached to (exit 69)."""


@dataclass(frozen=True)
class Timings:
    """The consumer settings of a soak stack: short, so faults are detected within seconds."""

    block: float = 1.0
    socket: float = 2.0
    connect: float = 1.0
    stall: float = 6.0
    task: float = 4.0
    max_attempts: int = 3
    backoff_base: float = 0.1
    backoff_cap: float = 1.0
    retry_base: float = 0.2
    retry_cap: float = 1.0
    heartbeat_ttl: float = 4.0
    recovery_interval: float = 1.0
    ping_interval: float = 1.0
    drain: float = 10.0
    watchdog_grace: float = 2.0
    watchdog_tick: float = 5.0  # supervisord's TICK_5

    def env(self) -> dict[str, str]:
        """The TASKD_* environment every process of the soak stack gets."""
        return {
            "TASKD_BLOCK_TIMEOUT": f"{self.block:g}",
            "TASKD_SOCKET_TIMEOUT": f"{self.socket:g}",
            "TASKD_CONNECT_TIMEOUT": f"{self.connect:g}",
            "TASKD_STALL_TIMEOUT": f"{self.stall:g}",
            "TASKD_TASK_TIMEOUT": f"{self.task:g}",
            "TASKD_MAX_ATTEMPTS": str(self.max_attempts),
            "TASKD_BACKOFF_BASE": f"{self.backoff_base:g}",
            "TASKD_BACKOFF_CAP": f"{self.backoff_cap:g}",
            "TASKD_RETRY_BASE": f"{self.retry_base:g}",
            "TASKD_RETRY_CAP": f"{self.retry_cap:g}",
            "TASKD_HEARTBEAT_TTL": f"{self.heartbeat_ttl:g}",
            "TASKD_RECOVERY_INTERVAL": f"{self.recovery_interval:g}",
            "TASKD_PING_INTERVAL": f"{self.ping_interval:g}",
            "TASKD_DRAIN_TIMEOUT": f"{self.drain:g}",
        }


@dataclass(frozen=True)
class FaultSpec:
    """How long a fault is held and planned to settle, and the bounds the verdict holds it to.

    `detect_bound`: seconds from the fault's start to its detection (None: none expected).
    `recover_bound`: seconds from the fault's end to its recovery.
    """

    kind: str
    active: float
    settle: float
    detect_bound: float | None
    recover_bound: float


def soak_timings(kinds: Iterable[str]) -> Timings:
    """The stack's timings for a schedule: a tiny reconnect backoff when it has a long outage.

    Settings are read once at process start, so the backoff cannot be shrunk for the outage
    alone; a smaller cap only makes every other fault's reconnect quicker (its bound follows).
    """
    if LONG_OUTAGE not in kinds:
        return Timings()
    base, cap = LONG_OUTAGE_BACKOFF
    return Timings(backoff_base=base, backoff_cap=cap)


def fault_specs(compressed: bool, t: Timings) -> dict[str, FaultSpec]:
    """Per kind: held/settle times (full or compressed) and bounds derived from the timings."""
    # A blocked claim or a silent reply is noticed after the socket timeout (block timeout +
    # margin); then reconnects retry within the backoff cap + the connect deadline.
    link_detect = t.socket + t.block + 3.0
    link_recover = t.socket + t.connect + t.backoff_cap + 6.0
    restart = 15.0  # supervisord start + interpreter start + first claim, on a loaded host
    outside_watchdog = t.stall + t.watchdog_grace + t.watchdog_tick + 7.0
    hang_one = t.task + 1.0 + restart / 2  # task timeout + watchdog interval + restart
    hang_all = t.max_attempts * hang_one + 10.0
    held = (
        {BLACKHOLE: 6.0, LATENCY: 8.0, REDIS_STOP: 4.0, OOM: 8.0, LONG_OUTAGE: 15.0}
        if compressed
        else {BLACKHOLE: 30.0, LATENCY: 60.0, REDIS_STOP: 20.0, OOM: 30.0, LONG_OUTAGE: 60.0}
    )
    settle = 3.0 if compressed else 20.0
    expected_stop = t.stall + t.watchdog_grace + t.watchdog_tick  # until the watchdog acts
    expected_hang = t.max_attempts * (t.task + 3.0)
    return {
        BLACKHOLE: FaultSpec(BLACKHOLE, held[BLACKHOLE], settle, link_detect, link_recover),
        RESET: FaultSpec(RESET, 0.0, settle, link_detect, link_recover),
        LATENCY: FaultSpec(LATENCY, held[LATENCY], settle, None, link_recover),
        REDIS_KILL: FaultSpec(REDIS_KILL, 1.0, settle, link_detect, link_recover),
        REDIS_STOP: FaultSpec(REDIS_STOP, held[REDIS_STOP], settle, link_detect, link_recover),
        CONSUMER_KILL: FaultSpec(CONSUMER_KILL, 0.0, settle, 5.0, restart),
        CONSUMER_STOP: FaultSpec(CONSUMER_STOP, expected_stop, settle, outside_watchdog, restart),
        FAIL_BURST: FaultSpec(FAIL_BURST, 0.0, settle, None, 30.0),
        HANG: FaultSpec(HANG, expected_hang, settle, t.task + 15.0, hang_all),
        # OOM: noticed by the first write a consumer gets refused (heartbeat, claim, ack)
        OOM: FaultSpec(OOM, held[OOM], settle, link_detect, link_recover),
        # the held time of a long outage is planned; it lasts until the attempts are made
        LONG_OUTAGE: FaultSpec(
            LONG_OUTAGE, held[LONG_OUTAGE], settle, link_detect, link_recover + restart / 3
        ),
    }


@dataclass
class Options:
    """Everything a run was asked to do (from the flags)."""

    duration: float
    rate: float
    faults: tuple[str, ...]
    seed: int
    run_dir: Path
    consumers: int = 2
    consumer_args: tuple[str, ...] = ()  # more flags of every consumer (--prefetch, ...)
    compressed: bool = False
    attach: bool = False
    supervisor_conf: Path | None = None
    redis_url: str | None = None
    records_dir: Path | None = None
    proxy_control: str | None = None
    handler: str = DEFAULT_HANDLER
    queue: str = DEFAULT_QUEUE
    channel: str = DEFAULT_CHANNEL
    pubsub_rate: float = 5.0
    drain_timeout: float = 120.0
    sample_interval: float = 2.0
    progress_interval: float = 10.0
    faults_explicit: bool = False  # --faults named kinds (an unavailable one fails the run)
    command: str = ""
