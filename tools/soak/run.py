"""One soak run: stack up, load and faults, drain, tear down, reconcile, report."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tools.soak import faults
from tools.soak.analysis import RunState, analyze, git_revision
from tools.soak.attached import AttachedStack
from tools.soak.evidence import FaultRun
from tools.soak.producer import Producer, Sampler
from tools.soak.progress import ProgressLine, RecordTail
from tools.soak.report import write_reports
from tools.soak.schedule import format_seconds, plan_schedule, schedule_margins
from tools.soak.settings import (
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_UNAVAILABLE,
    IDLE_GIVE_UP,
    SIMULATES,
    Options,
    StackError,
    fault_specs,
    soak_timings,
)
from tools.soak.stack import OwnedStack, Stack, wait_ready


class SoakRun:
    """One soak run: stack up, load and faults, drain, tear down, reconcile, report."""

    def __init__(self, opts: Options, stream: Any = None) -> None:
        self.opts = opts
        self.stream = stream or sys.stderr
        self.timings = soak_timings(opts.faults)
        self.specs = fault_specs(opts.compressed, self.timings)
        self.plan = plan_schedule(
            opts.faults, opts.duration, opts.seed, opts.compressed, opts.consumers, self.timings
        )
        self.progress = ProgressLine(self.stream, opts.progress_interval)
        self.stop_event = threading.Event()
        self.signal_received: int | None = None
        self.hurry = False
        self.stack: Stack | None = None
        self.producer: Producer | None = None
        self.sampler: Sampler | None = None
        self.tail: RecordTail | None = None
        self.runs: list[FaultRun] = []
        self.current: Generator[float, None, None] | None = None
        self.base = (int(time.time()) % 10**6) * 10**7  # ids unique across runs, multiple of 100
        self.origin = 0.0
        self.production_stopped = 0.0
        self.teardown_started = 0.0
        self.drained = False
        self.drain_seconds = 0.0
        self.paused_pids: set[int] = set()
        self.redis_paused = False
        self.redis_down = False  # a long outage shut Redis down: start it again when undoing
        self.oom_restore: dict[str, str] | None = None  # maxmemory settings an OOM fault changed
        self.dead_snapshot: list[bytes] = []
        self.leftovers: dict[str, list[int]] = {}
        self.error: str | None = None
        self.extended_by = 0.0
        self.git = git_revision()

    # -- control ----------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: Any = None) -> None:
        """First SIGINT/SIGTERM: stop, clean up, report. Second: clean up without waiting."""
        if self.signal_received is not None:
            self.hurry = True
            return
        self.signal_received = signum
        self.stop_event.set()

    def say(self, text: str) -> None:
        self.progress.say(f"soak: {text}")

    # -- the whole run ----------------------------------------------------------------------
    def execute(self) -> int:
        """Run everything; returns the exit code. Every process started is stopped here."""
        opts = self.opts
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_json("plan.json", {"seed": opts.seed, "faults": [asdict(p) for p in self.plan]})
        code = EXIT_FAIL
        produced = False
        try:
            self.stack = self._make_stack()
            self.say(f"run folder {opts.run_dir}")
            self.stack.start()
            wait_ready(self.stack, opts.queue, opts.channel, 60.0, self.stop_event)
            if self.stop_event.is_set():
                raise StackError("interrupted while starting")
            produced = True
            self._produce_with_faults()
            if not self.stop_event.is_set():
                self._drain()
            self._snapshot_redis()
        except StackError as exc:
            self.error = str(exc)
            code = EXIT_UNAVAILABLE
        except Exception as exc:  # noqa: BLE001 - a soak bug still cleans up and reports
            import traceback

            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=self.stream)
        finally:
            self.progress.finish()
            self._shutdown()
        if self.error:
            print(f"soak: error: {self.error}", file=self.stream)
        if not produced:
            (opts.run_dir / "report.md").write_text(
                f"# Soak report: ERROR\n\nThe stack did not start: {self.error}\n"
            )
            return code if self.signal_received is None else 128 + self.signal_received
        state = self.state()
        state.save(opts.run_dir / "state.json")
        doc = analyze(state, self.producer.produced if self.producer else None)
        write_reports(opts.run_dir, doc)
        self.say(f"{doc['verdict']['status']}: {doc['verdict']['summary']}")
        self.say(f"report: {opts.run_dir / 'report.md'}")
        if self.signal_received is not None:
            return 128 + self.signal_received
        return EXIT_PASS if doc["verdict"]["pass"] else EXIT_FAIL

    def state(self) -> RunState:
        """Everything the analysis needs, as plain data."""
        assert self.stack is not None
        p = self.producer
        opts = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.opts).items()}
        return RunState(
            opts=opts,
            consumers=list(self.stack.consumers),
            logs={k: [str(x) for x in v] for k, v in self.stack.log_paths().items()},
            records_dir=str(self.stack.records_dir),
            base=self.base,
            origin=self.origin,
            production_stopped=self.production_stopped,
            teardown_started=self.teardown_started,
            drained=self.drained,
            drain_seconds=self.drain_seconds,
            extended_by=self.extended_by,
            signal_received=self.signal_received,
            error=self.error,
            runs=[asdict(r) for r in self.runs],
            leftovers=self.leftovers,
            producer={
                "published": p.published if p else 0,
                "published_unheard": p.published_unheard if p else 0,
                "publish_errors": p.publish_errors if p else 0,
                "push_errors": p.push_errors if p else 0,
                "push_refused": p.push_refused if p else 0,
                "skipped_seconds": p.skipped_seconds if p else 0.0,
            },
            timings=asdict(self.timings),
            git=self.git,
        )

    def _make_stack(self) -> Stack:
        opts = self.opts
        if not opts.attach:
            return OwnedStack(
                opts.run_dir, opts.consumers, opts.handler, self.timings, opts.consumer_args
            )
        assert opts.supervisor_conf and opts.redis_url and opts.records_dir
        return AttachedStack(
            opts.supervisor_conf, opts.redis_url, opts.records_dir, opts.proxy_control, opts.run_dir
        )

    def _write_json(self, name: str, doc: Any) -> None:
        (self.opts.run_dir / name).write_text(json.dumps(doc, indent=2, default=str) + "\n")

    # -- production and faults --------------------------------------------------------------
    def _produce_with_faults(self) -> None:
        opts = self.opts
        stack = self.stack
        assert stack is not None
        stack.records_dir.mkdir(parents=True, exist_ok=True)
        self.tail = RecordTail(stack.records_dir, self.base, since=time.time() - 1.0)
        self.producer = Producer(
            stack.redis_url,
            opts.queue,
            opts.channel,
            opts.rate,
            opts.pubsub_rate,
            opts.run_dir / "produced.tsv",
            self.base,
        )
        self.sampler = Sampler(
            stack, opts.queue, opts.sample_interval, opts.run_dir / "samples.jsonl"
        )
        self.origin = time.time()
        self.producer.start()
        self.sampler.start()
        self.runs = [
            FaultRun(p.index, p.kind, p.target, dict(p.params), self.origin + p.at)
            for p in self.plan
        ]
        _, tail_margin = schedule_margins(opts.duration, opts.compressed)
        end = self.origin + opts.duration
        cap = self.origin + opts.duration + max(60.0, 0.5 * opts.duration)
        self.say(
            f"producing {opts.rate:g} tasks/s for {format_seconds(opts.duration)} with "
            f"{len(self.runs)} fault(s), seed {opts.seed}"
        )
        i = 0
        resume_at = 0.0
        run: FaultRun | None = None
        while not self.stop_event.is_set():
            now = time.time()
            self.tail.poll()
            if self.current is None and i < len(self.runs) and now >= self.runs[i].planned_at:
                run = self.runs[i]
                if now > cap:
                    run.error = "not run: no time left (earlier faults recovered late)"
                    i += 1
                    continue
                if run.kind not in stack.capabilities:
                    why = stack.missing.get(run.kind, "unavailable")
                    if opts.faults_explicit:
                        run.error = f"not run: {why}"
                    else:
                        run.skipped = why
                    i += 1
                    continue
                self.say(f"fault {run.label()}: {SIMULATES[run.kind]}")
                self.current = faults.inject(self, run)
                resume_at = now
            if self.current is not None and run is not None and now >= resume_at:
                try:
                    resume_at = now + next(self.current)
                except StopIteration:
                    run.moved_on = time.time()
                    self.current = None
                    i += 1
                except Exception as exc:  # noqa: BLE001 - a failed injection fails that fault
                    run.error = f"injection failed: {type(exc).__name__}: {exc}"
                    self.say(f"fault {run.label()}: {run.error}")
                    self._close_current()
                    faults.undo_all(self)
                    i += 1
            faults_done = self.current is None and i >= len(self.runs)
            if faults_done and now >= end:
                break
            if faults_done and self.runs and now >= end - tail_margin:
                last = max((r.moved_on or 0.0) for r in self.runs)
                if last + tail_margin > end:  # late faults: keep a quiet tail after the last
                    self.extended_by = last + tail_margin - (self.origin + opts.duration)
                    end = last + tail_margin
            if not faults_done and now >= end and now >= cap:
                self._close_current()
                for r in self.runs[i:]:
                    r.error = r.error or "not run: no time left (earlier faults recovered late)"
                break
            self._show_progress(run if self.current is not None else None, end)
            wait = max(0.0, resume_at - now) if self.current is not None else 0.2
            self.stop_event.wait(min(0.2, wait))
        self._close_current()
        self.production_stopped = time.time()
        if not self.producer.stop_production(30.0):
            self.say("some tasks could not be pushed before the deadline (they do not count)")
        self.production_stopped = time.time()

    def _show_progress(self, run: FaultRun | None, end: float) -> None:
        assert self.producer and self.tail and self.sampler
        now = time.time()
        depths = (self.sampler.latest or {}).get("depths") or {}
        backlog = depths.get("pending", "?")
        fault = "-"
        if run is not None and run.started is not None:
            fault = f"{run.kind} {run.target}".strip() + f" +{now - run.started:.0f}s"
        elif run is not None:
            fault = f"{run.kind} (starting)"
        restarts = sum(self.sampler.restarts.values())
        self.progress.update(
            f"{format_seconds(now - self.origin)}/{format_seconds(end - self.origin)} "
            f"produced {len(self.producer.produced)} done {self.tail.done_count} "
            f"backlog {backlog} fault {fault} restarts {restarts}"
        )

    def _close_current(self) -> None:
        if self.current is not None:
            with contextlib.suppress(Exception):
                self.current.close()  # runs the fault's finally: proxy back to pass, SIGCONT
            self.current = None

    # -- the end ----------------------------------------------------------------------------
    def _drain(self) -> None:
        """Wait (bounded) until every task is done or dead-lettered and Redis holds nothing."""
        assert self.producer and self.tail and self.sampler
        self.say(f"production stopped; draining (deadline {self.opts.drain_timeout:g}s)")
        started = time.monotonic()
        deadline = started + self.opts.drain_timeout
        scan = 0
        idle_since: float | None = None
        while not self.stop_event.is_set():
            self.tail.poll()
            with self.producer.lock:
                kinds = self.producer.produced.kinds
                while scan < len(kinds) and (kinds[scan] != 1 or self.tail.is_done(scan)):
                    scan += 1
                undone = sum(
                    1 for n in range(scan, len(kinds)) if kinds[n] == 1 and not self.tail.is_done(n)
                )
                expected = set(self.producer.produced.ids_of("fail")) | set(
                    self.producer.produced.ids_of("hang")
                )
            depths = self.sampler.latest.get("depths") or {}
            idle = bool(depths) and not any(
                depths.get(k) for k in ("pending", "delayed", "processing")
            )
            dead_ok = not expected or expected <= faults.dead_ids_live(self)
            if undone == 0 and idle and dead_ok:
                self.drained = True
                break
            # Redis holds nothing more to do, yet tasks are not recorded: they never will be
            # (records are written before the ack); waiting longer cannot change the verdict.
            idle_since = (idle_since or time.monotonic()) if idle else None
            if idle_since is not None and time.monotonic() - idle_since > IDLE_GIVE_UP:
                self.drained = True
                self.say(f"Redis is idle with {undone} task(s) never done: they are lost")
                break
            if time.monotonic() >= deadline:
                self.say(f"drain deadline passed with {undone} task(s) not done")
                break
            self.progress.update(
                f"draining: {undone} task(s) to go, backlog {depths.get('pending', '?')}, "
                f"{deadline - time.monotonic():.0f}s left"
            )
            self.stop_event.wait(0.5)
        self.drain_seconds = time.monotonic() - started

    def _snapshot_redis(self) -> None:
        """Dead letters and whatever is still in Redis, read before Redis is stopped."""
        import redis

        from daemon.keys import QueueKeys

        assert self.stack is not None
        qk = QueueKeys(self.opts.queue)
        client: Any = redis.Redis.from_url(
            self.stack.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        try:
            self.dead_snapshot = list(client.lrange(qk.dead, 0, -1))
            places: dict[str, list[bytes]] = {"pending": client.lrange(qk.pending, 0, -1)}
            places["delayed"] = [m[16:] for m in client.zrange(qk.delayed, 0, -1)]
            held: list[bytes] = []
            for key in client.scan_iter(match=qk.processing_prefix + "*", count=1000):
                held += client.lrange(key, 0, -1)
            places["processing"] = held
        except redis.RedisError as exc:
            self.say(f"could not read Redis at the end: {exc}")
            return
        finally:
            client.close()
        from tools.soak import handler as soak_handler

        for place, bodies in places.items():
            ids = []
            for body in bodies:
                with contextlib.suppress(ValueError):
                    task_id = soak_handler.parse_body(body).get("id")
                    if isinstance(task_id, int):
                        ids.append(task_id)
            self.leftovers[place] = ids
        with open(self.opts.run_dir / "dead_letters.jsonl", "wb") as out:
            for entry in self.dead_snapshot:
                out.write(entry + b"\n")

    def _shutdown(self) -> None:
        """Stop the threads, undo faults, stop every process started; bounded throughout."""
        if self.producer is not None:
            self.producer.producing.clear()
            self.producer.stop(5.0)
        self._close_current()
        faults.undo_all(self)
        if self.sampler is not None:
            self.sampler.stop(5.0)
        self.teardown_started = time.time()
        if self.stack is not None:
            self.say("stopping the stack" + (" (hurrying)" if self.hurry else ""))
            try:
                self.stack.teardown(lambda: self.hurry)
            except Exception as exc:  # noqa: BLE001 - report, never leave the rest running
                self.say(f"teardown problem: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self.stack.finish_logs()
