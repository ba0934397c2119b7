"""Live progress: the tail of the records and the one-line progress display."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.soak.records import Record, parse_record, record_files


class RecordTail:
    """Reads the record files as they grow (live progress and recovery checks)."""

    def __init__(self, directory: Path, base: int, since: float = 0.0) -> None:
        self.directory = directory
        self.base = base
        self.since = since
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.done = bytearray()
        self.done_count = 0
        self.messages = 0
        self.last_by: dict[tuple[str, int], float] = {}

    def poll(self) -> None:
        for path in record_files(self.directory):
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    chunk = handle.read()
            except OSError:
                continue
            if not chunk:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            text = self.partial.pop(path, "") + chunk.decode("ascii", "replace")
            lines = text.split("\n")
            if lines[-1]:
                self.partial[path] = lines[-1]
            for line in lines[:-1]:
                record = parse_record(line)
                if record is None or record.handled < self.since:
                    continue
                self._add(record)

    def _add(self, r: Record) -> None:
        if r.outcome == "msg":
            self.messages += 1
            return
        key = (r.worker, r.pid)
        self.last_by[key] = max(self.last_by.get(key, 0.0), r.handled)
        if r.outcome != "ok":
            return
        try:
            n = int(r.id) - self.base
        except ValueError:
            return
        if n < 0:
            return
        if n >= len(self.done):
            self.done.extend(bytes(n + 1 - len(self.done) + 4096))
        if not self.done[n]:
            self.done[n] = 1
            self.done_count += 1

    def handled_after(self, worker: str, t: float, not_pid: int | None = None) -> bool:
        return any(
            w == worker and pid != not_pid and last > t for (w, pid), last in self.last_by.items()
        )

    def all_handled_after(self, workers: Sequence[str], t: float) -> bool:
        return all(self.handled_after(w, t) for w in workers)

    def is_done(self, n: int) -> bool:
        return n < len(self.done) and bool(self.done[n])


class ProgressLine:
    """One line rewritten in place on a TTY; a log line every `interval` seconds otherwise."""

    def __init__(self, stream: Any, interval: float) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = 1.0 if self.tty else interval
        self.last = 0.0
        self.width = 0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line of its own (above the progress line on a TTY)."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
