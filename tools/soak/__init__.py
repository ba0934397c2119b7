"""The soak test: the whole stack under load and scheduled faults, then a verdict from records.

`python -m tools.soak` (or `scripts/soak.py`, `make soak`) starts, in a run folder, a redis-server
with AOF (appendfsync always), the TCP fault proxy (tools/chaos_proxy) in front of it and a
supervisord built from conf/supervisord.conf whose consumers and subscriber reach Redis through
the proxy and run `tools.soak.handler:handle`, which records every task it handles in files
outside Redis. A producer pushes tasks straight into Redis at `--rate` while a seeded schedule
injects faults (network, Redis, process, poison tasks). At the end the backlog drains, and the
verdict is reconciled from the records: nothing lost, every fault detected and recovered within
its bound, dead letters exactly the tasks designed to fail, no memory or fd slope. See
docs/soak.md.

Modules: settings (constants, kinds, timings, bounds), schedule, faults (REGISTRY of
injections), records (and reconciliation), evidence and evaluation (each fault's verdict),
leaks, processes, supervisord_conf, stack and attached (the stacks), producer (and sampler),
progress, run (one SoakRun), analysis, report, cli; handler runs inside the consumers. Redis,
ports, child processes, waiting and filling Redis are the harness's (tools/harness).
"""

from __future__ import annotations

from tools.soak.analysis import RunState, analyze
from tools.soak.attached import AttachedStack
from tools.soak.cli import main
from tools.soak.evaluation import evaluate_fault, explain_exits
from tools.soak.evidence import (
    Evidence,
    FaultRun,
    ProcessEvent,
    parse_json_events,
    parse_supervisord_log,
    redis_errors_total,
)
from tools.soak.faults import REGISTRY
from tools.soak.leaks import LeakPolicy, judge_process, read_samples
from tools.soak.producer import Producer
from tools.soak.progress import ProgressLine
from tools.soak.records import (
    ProducedSet,
    Reconciliation,
    Record,
    Window,
    parse_record,
    percentile,
    pubsub_losses,
    read_produced,
    reconcile,
)
from tools.soak.report import write_reports
from tools.soak.run import SoakRun
from tools.soak.schedule import (
    PlannedFault,
    ScheduleError,
    parse_duration,
    parse_faults,
    plan_schedule,
)
from tools.soak.settings import (
    BLACKHOLE,
    CONSUMER_KILL,
    CONSUMER_STOP,
    DEFAULT_CHANNEL,
    DEFAULT_HANDLER,
    DEFAULT_QUEUE,
    EXIT_CONFIG,
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_UNAVAILABLE,
    FAIL_BURST,
    HANG,
    KINDS,
    LATENCY,
    LONG_OUTAGE,
    LONG_OUTAGE_MIN_ATTEMPTS,
    OOM,
    OOM_CHUNK,
    OOM_FILLER_KEY,
    REDIS_KILL,
    REDIS_STOP,
    RESET,
    SIMULATES,
    FaultSpec,
    Options,
    StackError,
    Timings,
    UsageError,
    fault_specs,
    soak_timings,
)
from tools.soak.stack import OwnedStack, Stack, wait_ready
from tools.soak.supervisord_conf import build_supervisord_conf, conf_sections

__all__ = [
    "AttachedStack",
    "BLACKHOLE",
    "CONSUMER_KILL",
    "CONSUMER_STOP",
    "DEFAULT_CHANNEL",
    "DEFAULT_HANDLER",
    "DEFAULT_QUEUE",
    "EXIT_CONFIG",
    "EXIT_FAIL",
    "EXIT_PASS",
    "EXIT_UNAVAILABLE",
    "Evidence",
    "FAIL_BURST",
    "FaultRun",
    "FaultSpec",
    "HANG",
    "KINDS",
    "LATENCY",
    "LONG_OUTAGE",
    "LONG_OUTAGE_MIN_ATTEMPTS",
    "LeakPolicy",
    "OOM",
    "OOM_CHUNK",
    "OOM_FILLER_KEY",
    "Options",
    "OwnedStack",
    "PlannedFault",
    "ProcessEvent",
    "ProducedSet",
    "Producer",
    "ProgressLine",
    "REDIS_KILL",
    "REDIS_STOP",
    "REGISTRY",
    "RESET",
    "Reconciliation",
    "Record",
    "RunState",
    "SIMULATES",
    "ScheduleError",
    "SoakRun",
    "Stack",
    "StackError",
    "Timings",
    "UsageError",
    "Window",
    "analyze",
    "build_supervisord_conf",
    "conf_sections",
    "evaluate_fault",
    "explain_exits",
    "fault_specs",
    "judge_process",
    "main",
    "parse_duration",
    "parse_faults",
    "parse_json_events",
    "parse_record",
    "parse_supervisord_log",
    "percentile",
    "plan_schedule",
    "pubsub_losses",
    "read_produced",
    "read_samples",
    "reconcile",
    "redis_errors_total",
    "soak_timings",
    "wait_ready",
    "write_reports",
]
