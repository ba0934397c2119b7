"""The soak's command line: flags -> Options, signals, exit codes."""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tools.soak.analysis import RunState, analyze
from tools.soak.report import write_reports
from tools.soak.run import SoakRun
from tools.soak.schedule import ScheduleError, parse_duration, parse_faults, plan_schedule
from tools.soak.settings import (
    DEFAULT_CHANNEL,
    DEFAULT_HANDLER,
    DEFAULT_QUEUE,
    EXIT_CONFIG,
    EXIT_FAIL,
    EXIT_PASS,
    ROOT,
    SIMULATES,
    Options,
    UsageError,
    soak_timings,
)

_EPILOG = f"""\
faults (--faults all, or a comma list):
{chr(10).join(f"  {k:<14} {v}" for k, v in SIMULATES.items())}

exit codes: 0 PASS (nothing lost, every fault recovered within its bound, dead letters exactly
as designed, no leak slope, every restart explained), 1 FAIL, 69 the stack could not start,
78 bad flags, 130/143 interrupted (SIGINT/SIGTERM; processes stopped, report written).

--attach expects a running supervisord stack (see docs/soak.md): its consumers run
--handler tools.soak.handler:handle with SOAK_RECORDS_DIR=<--records-dir> and the soak
timings; --redis-url is the Redis they consume (the producer pushes there directly);
proxy faults need --proxy-control, Redis faults a [program:redis] in that supervisord;
oom needs CONFIG on that Redis; long-outage runs only on the soak's own stack (a schedule with
it gives every process a tiny reconnect backoff: 1 ms base, 10 ms cap).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


_CONSUMER_ARG = re.compile(r"[\w.:/=-]+")  # no spaces or % in supervisord's command=

def build_parser() -> argparse.ArgumentParser:
    """The soak's flags."""
    p = _Parser(
        prog="python -m tools.soak",
        description="Soak test: the taskd stack under load and scheduled faults, then a verdict "
        "reconciled from records (report.md, report.json, report.png in the run folder).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        help="how long to produce: 90s, 10m, 2h (default 10m; 2m with --compressed)",
    )
    p.add_argument("--rate", default="200", help="tasks per second (default 200)")
    p.add_argument("--faults", default="all", help="all, none, or a comma list (default all)")
    p.add_argument("--seed", help="seed of the fault schedule (default: random, printed)")
    p.add_argument("--run-dir", help="run folder (default var/soak/<timestamp>); must be empty")
    p.add_argument("--consumers", default="2", help="consumer processes (default 2)")
    p.add_argument(
        "--consumer-args",
        default="",
        help="more flags for every consumer, e.g. '--prefetch 20 --concurrency 4' "
        "(checked by taskd consume itself when the stack starts)",
    )
    p.add_argument(
        "--compressed",
        action="store_true",
        help="short faults (black hole 6 s, latency 8 s, SIGSTOP 4 s, OOM 8 s, a long "
        "outage of ~1,500 reconnect attempts...): every kind once in about 2 minutes, for CI",
    )
    p.add_argument(
        "--attach",
        action="store_true",
        help="use a running stack (--supervisor-conf, --redis-url, --records-dir)",
    )
    p.add_argument("--supervisor-conf", help="with --attach: the stack's supervisord conf")
    p.add_argument("--redis-url", help="with --attach: the Redis the stack consumes")
    p.add_argument("--records-dir", help="with --attach: the stack's SOAK_RECORDS_DIR folder")
    p.add_argument(
        "--proxy-control",
        help="with --attach: HOST:PORT of the chaos proxy's "
        "control API in front of that Redis (enables the link faults)",
    )
    p.add_argument("--queue", default=DEFAULT_QUEUE, help=f"queue (default {DEFAULT_QUEUE})")
    p.add_argument(
        "--channel", default=DEFAULT_CHANNEL, help=f"pub/sub channel (default {DEFAULT_CHANNEL})"
    )
    p.add_argument("--pubsub-rate", default="5", help="pub/sub messages per second (default 5)")
    p.add_argument(
        "--handler",
        default=DEFAULT_HANDLER,
        help=f"consumer handler (default {DEFAULT_HANDLER}; the self-test uses "
        "tools.soak.handler:handle_lossy)",
    )
    p.add_argument(
        "--report-only",
        metavar="RUN_DIR",
        help="write report.md/json/png again from a finished run folder (no processes)",
    )
    p.add_argument(
        "--drain-timeout",
        help="seconds to wait for the backlog at the end (default 120; 60 with --compressed)",
    )
    return p


def _number(flag: str, text: str, low: float, high: float, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{flag}={text!r}: expected {kind} in {low:g}..{high:g}") from None
    if not (low <= value <= high) or not math.isfinite(value):
        raise UsageError(f"{flag}={text!r}: expected a value in {low:g}..{high:g}")
    return value


def parse_options(argv: Sequence[str] | None) -> Options:
    """Flags -> Options; raises UsageError with one line for anything wrong."""
    args = build_parser().parse_args(argv)
    try:
        duration = parse_duration(args.duration or ("2m" if args.compressed else "10m"))
    except ValueError as exc:
        raise UsageError(f"--duration={exc}") from None
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        raise UsageError(f"--faults: {exc}") from None
    rate = _number("--rate", args.rate, 0.1, 20000)
    consumers = int(_number("--consumers", args.consumers, 1, 20, integer=True))
    pubsub_rate = _number("--pubsub-rate", args.pubsub_rate, 0, 1000)
    seed = (
        int(_number("--seed", args.seed, 0, 2**63, integer=True))
        if args.seed is not None
        else random.SystemRandom().randrange(2**31)
    )
    drain = (
        _number("--drain-timeout", args.drain_timeout, 1, 86400)
        if args.drain_timeout
        else (60.0 if args.compressed else 120.0)
    )
    consumer_args = tuple(args.consumer_args.split())
    if not all(_CONSUMER_ARG.fullmatch(arg) for arg in consumer_args):
        raise UsageError(
            f"--consumer-args={args.consumer_args!r}: expected flags and values made of "
            "letters, digits and . : / = _ - (they go into supervisord's command line)"
        )
    if args.handler.count(":") != 1 or not all(args.handler.split(":")):
        raise UsageError(f"--handler={args.handler!r}: expected module:function")
    attach_flags = ("supervisor_conf", "redis_url", "records_dir", "proxy_control")
    if args.attach:
        for name in attach_flags[:3]:
            if not getattr(args, name):
                raise UsageError(f"--attach needs --{name.replace('_', '-')}")
        from daemon import redis_url

        try:
            redis_url.parse(args.redis_url)
        except redis_url.RedisUrlError as exc:
            raise UsageError(f"--redis-url: {exc}") from None
        if not Path(args.supervisor_conf).is_file():
            raise UsageError(f"--supervisor-conf={args.supervisor_conf!r}: no such file")
        if args.proxy_control and not re.fullmatch(r"[\w.\-]+:\d{1,5}", args.proxy_control):
            raise UsageError(f"--proxy-control={args.proxy_control!r}: expected HOST:PORT")
    else:
        for name in attach_flags:
            if getattr(args, name):
                raise UsageError(f"--{name.replace('_', '-')} needs --attach")
    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UsageError(f"--run-dir={args.run_dir!r}: expected a new or empty folder")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = ROOT / "var" / "soak" / stamp
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = ROOT / "var" / "soak" / f"{stamp}-{n}"
    try:
        plan_schedule(faults, duration, seed, args.compressed, consumers, soak_timings(faults))
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    return Options(
        duration=duration,
        rate=rate,
        faults=faults,
        seed=seed,
        run_dir=run_dir,
        consumers=consumers,
        consumer_args=consumer_args,
        compressed=args.compressed,
        attach=args.attach,
        supervisor_conf=Path(args.supervisor_conf).resolve() if args.supervisor_conf else None,
        redis_url=args.redis_url,
        records_dir=Path(args.records_dir).resolve() if args.records_dir else None,
        proxy_control=args.proxy_control,
        handler=args.handler,
        queue=args.queue,
        channel=args.channel,
        pubsub_rate=pubsub_rate,
        drain_timeout=drain,
        sample_interval=1.0 if args.compressed or duration <= 300 else 2.0,
        progress_interval=5.0 if args.compressed else 10.0,
        faults_explicit=args.faults.strip().lower() not in ("all", "none", ""),
        command=" ".join(["soak", *(argv if argv is not None else sys.argv[1:])]),
    )


def _report_only(argv: Sequence[str] | None) -> Path | None:
    args = build_parser().parse_args(argv)
    if not args.report_only:
        return None
    run_dir = Path(args.report_only)
    if not (run_dir / "state.json").is_file():
        raise UsageError(f"--report-only={args.report_only!r}: no state.json in that folder")
    return run_dir


def report_again(run_dir: Path) -> int:
    """Re-analyse a finished run folder and rewrite its reports; exit code as the run's."""
    state = RunState.load(run_dir / "state.json")
    doc = analyze(state)
    write_reports(run_dir, doc)
    print(f"soak: {doc['verdict']['status']}: {doc['verdict']['summary']}", file=sys.stderr)
    if state.signal_received is not None:
        return 128 + state.signal_received
    return EXIT_PASS if doc["verdict"]["pass"] else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of `python -m tools.soak` and `scripts/soak.py`."""
    try:
        if report_only := _report_only(argv):
            return report_again(report_only)
        opts = parse_options(argv)
    except UsageError as exc:
        print(f"soak: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_CONFIG
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    soak = SoakRun(opts)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, soak.on_signal)
    try:
        return soak.execute()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
