"""The one-minute introduction to producer/consumer: cooks, eaters and a bounded counter.

Three cook threads put dishes on a counter that holds ten (a bounded ``queue.Queue``); two
eater threads take them off. When the counter is full the cooks wait; when it is empty the
eaters wait. That is all a task queue is - taskd does the same with a Redis list between
processes, and adds what this toy leaves out: surviving a crash of an eater mid-dish.

    python examples/kitchen.py --seconds 5 --seed 1

After --seconds (or on Ctrl-C) the cooks stop, the eaters finish what is left on the counter,
every thread is joined with a deadline, and the last line balances: made == eaten + left.
A second Ctrl-C sends the eaters home at once; what they leave is counted as left.
"""

from __future__ import annotations

import argparse
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

POLL = 0.1  # seconds a cook or eater waits on the counter before looking at the clock again


@dataclass
class Kitchen:
    """The shared state: the counter, the tallies, and the two ways of saying stop."""

    capacity: int = 10
    max_sleep: float = 1.0
    seed: int | None = None
    counter: queue.Queue[int] = field(init=False)
    closing: threading.Event = field(default_factory=threading.Event)  # cooks stop
    leaving: threading.Event = field(default_factory=threading.Event)  # eaters stop
    made: int = 0
    eaten: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.counter = queue.Queue(self.capacity)

    def rng(self, name: str) -> random.Random:
        """Each thread's own generator: with --seed, its dishes and pauses repeat exactly."""
        return random.Random(None if self.seed is None else f"{self.seed}:{name}")

    def say(self, line: str) -> None:
        with self._lock:  # one line at a time, never two threads mixed on one line
            print(line, flush=True)

    def cook(self) -> None:
        """Make dishes until closing time; a dish counts as made once it is on the counter."""
        name = threading.current_thread().name
        rng = self.rng(name)
        while not self.closing.is_set():
            dish = rng.randrange(9)
            while not self.closing.is_set():
                try:
                    self.counter.put(dish, timeout=POLL)
                except queue.Full:
                    continue  # counter full: wait for an eater, but keep an eye on the clock
                with self._lock:
                    self.made += 1
                self.say(f"cook {name} made {dish} --- {self.counter.qsize()} left unsold")
                break
            self.closing.wait(rng.random() * self.max_sleep)

    def eat(self) -> None:
        """Eat until the cooks have closed and the counter is empty, or until sent home."""
        name = threading.current_thread().name
        rng = self.rng(name)
        while not self.leaving.is_set():
            try:
                dish = self.counter.get(timeout=POLL)
            except queue.Empty:
                if self.closing.is_set():
                    return  # closed and nothing left: done
                continue
            with self._lock:
                self.eaten += 1
            self.say(f"eater {name} ate {dish} --- {self.counter.qsize()} left to eat")
            self.leaving.wait(rng.random() * self.max_sleep)

    def summary(self) -> str:
        return f"made {self.made}, eaten {self.eaten}, left {self.counter.qsize()}"


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kitchen.py",
        description="Producer/consumer with threads and a bounded queue: cooks and eaters.",
    )
    parser.add_argument(
        "--seconds", type=_non_negative, default=10.0, help="how long the cooks work"
    )
    parser.add_argument(
        "--max-sleep", type=_non_negative, default=1.0, help="longest pause after each dish (s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="repeat the same dishes and pauses")
    parser.add_argument("--cooks", type=_count, default=3, help="producer threads (default 3)")
    parser.add_argument("--eaters", type=_count, default=2, help="consumer threads (default 2)")
    parser.add_argument("--capacity", type=_count, default=10, help="dishes the counter holds")
    parser.add_argument(
        "--drain-seconds",
        type=_non_negative,
        default=5.0,
        help="after closing, how long the eaters may take to finish the counter (default 5)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kitchen = Kitchen(capacity=args.capacity, max_sleep=args.max_sleep, seed=args.seed)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # First Ctrl-C (or SIGTERM): close the kitchen. Second: send the eaters home too.
        (kitchen.leaving if kitchen.closing.is_set() else kitchen.closing).set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    # Named as in the seed's output: cooks Thread-1..3, eaters Thread-4..5.
    cooks = [
        threading.Thread(target=kitchen.cook, name=f"Thread-{i + 1}", daemon=True)
        for i in range(args.cooks)
    ]
    eaters = [
        threading.Thread(target=kitchen.eat, name=f"Thread-{args.cooks + i + 1}", daemon=True)
        for i in range(args.eaters)
    ]
    for thread in cooks + eaters:
        thread.start()

    _wait(kitchen.closing, time.monotonic() + args.seconds)
    kitchen.closing.set()
    stragglers = _join(cooks, time.monotonic() + POLL + 1.0)
    if _join(eaters, time.monotonic() + args.drain_seconds):
        kitchen.leaving.set()  # drain time is up: what is on the counter stays there
        stragglers += _join(eaters, time.monotonic() + args.max_sleep + POLL + 1.0)

    print(kitchen.summary(), flush=True)
    if stragglers:
        names = ", ".join(t.name for t in stragglers)
        print(f"warning: {names} did not stop in time", file=sys.stderr)
        return 1
    return 0


# The main thread waits in short slices: a blocked lock wait is not always woken by a signal,
# and the Ctrl-C handler only runs once the main thread is back in Python code.
def _wait(event: threading.Event, deadline: float) -> None:
    """Wait until `event` is set or `deadline` (monotonic) passes."""
    while not event.is_set() and time.monotonic() < deadline:
        event.wait(min(POLL, max(0.0, deadline - time.monotonic())))


def _join(threads: list[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join the threads by `deadline` (monotonic); returns the ones still running."""
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        next(t for t in threads if t.is_alive()).join(POLL)
    return [t for t in threads if t.is_alive()]


if __name__ == "__main__":
    raise SystemExit(main())
