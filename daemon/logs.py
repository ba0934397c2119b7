"""structlog configuration: JSON lines on stdout (console rendering on a TTY), done once.

taskd's own events take structlog's fast path: a filtering bound logger made for the configured
level (a call below it is a bare ``return None``), the processors run in the caller, the line
serialised by orjson (json when orjson is missing) and written as bytes to the stream's buffer,
one write and one flush per line. No stdlib ``LogRecord``, handler or formatter is involved, so
the per-task ``task.done`` line costs 10-18 µs instead of ~90 (docs/benchmarks.md; the write(2)
is 2-3 µs of it) and ~0.4 µs below the level. The stdlib route stays
for third-party libraries' records (redis-py, gunicorn, werkzeug): they go through a
``logging.StreamHandler`` on the same stream, rendered by the same processors into the same
line format, under the same lock, so every line of a taskd process is one JSON object that
starts with an ISO UTC timestamp, a level and an event.

Logging never raises and never writes what is not text: a handler's error may carry lone
surrogates (a file name decoded with surrogateescape) or bytes, and the loop logs it as it is.
Those are escaped (``\\udcff``, ``\\xff``) so every line is valid UTF-8 for any log shipper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

try:  # a fast serialiser, a core dependency; json keeps logging alive where it is missing
    import orjson
except ImportError:  # pragma: no cover - orjson is in the dependencies
    orjson = None  # type: ignore[assignment]

from daemon import redis_url


def _redact_secrets(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: any value that looks like a URL with credentials is redacted."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = _redacted(value)
    return event_dict


def _redacted(value: str) -> str:
    """`value` with the credentials of any URL in it hidden; all of it hidden if that fails."""
    try:
        return redis_url.redact(value)
    except Exception:  # noqa: BLE001 - logging must not raise; hide it all instead
        return "<redacted: looked like a URL with credentials>"


def escape_text(text: str) -> str:
    """`text` made encodable as UTF-8: lone surrogates become ``\\udcff`` escapes.

    O(1) for ASCII text (the common case); an encode attempt otherwise.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _printable_value(value: Any) -> Any:
    if type(value) is str:
        return escape_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return type(value)(_printable_value(v) for v in value) if value else value
    if isinstance(value, dict):
        return {_printable_value(k): _printable_value(v) for k, v in value.items()}
    return value


def _printable(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every value as valid text: surrogates and undecodable bytes escaped, never an error."""
    for key, value in event_dict.items():
        if type(value) is not str or not value.isascii():  # ASCII text, the usual: untouched
            event_dict[key] = _printable_value(value)
    return event_dict


def _json_default(obj: Any) -> str:
    """JSON for what json cannot encode: its repr, escaped; a repr that raises is named."""
    try:
        return escape_text(repr(obj))
    except Exception:  # noqa: BLE001 - logging must not raise
        return f"<{type(obj).__name__}: repr failed>"


class _NeverRaisingFormatter(structlog.stdlib.ProcessorFormatter):
    """A line that cannot be rendered becomes a line saying so, instead of vanishing."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except Exception as exc:  # noqa: BLE001 - a log call must never fail its caller
            event = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
            return json.dumps(
                {
                    "level": "error",
                    "event": "log.unrenderable",
                    "logger": record.name,
                    "original_event": _json_default(event),
                    "error": _json_default(exc),
                }
            )


_FIRST = ("timestamp", "level", "event")


def _lead_with_essentials(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """timestamp, level and event first: what a person scanning a JSON line looks for."""
    head = {k: event_dict.pop(k) for k in _FIRST if k in event_dict}
    return {**head, **event_dict}


def _add_logger_name(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The ``logger`` key of taskd's own events: the name given to ``structlog.get_logger``."""
    event_dict["logger"] = _logger.name
    return event_dict


# structlog keeps one ContextVar per bound key in this dict; reading those few directly is
# ~4x cheaper than merge_contextvars' walk over a copy of the whole context
_STRUCTLOG_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
_PREFIX_LEN = len(getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_"))


def _merge_contextvars(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """merge_contextvars, reading structlog's own variables (its private map, when there)."""
    if _STRUCTLOG_VARS is None:  # pragma: no cover - another structlog layout
        return dict(structlog.contextvars.merge_contextvars(logger, name, event_dict))
    for var in tuple(_STRUCTLOG_VARS.values()):  # a snapshot: another thread may add a key
        value = var.get()
        if value is not Ellipsis:
            event_dict.setdefault(var.name[_PREFIX_LEN:], value)
    return event_dict


class _UtcIsoTimestamp:
    """TimeStamper(fmt="iso", utc=True)'s text (``2026-01-02T03:04:05.123456Z``) at a quarter
    of its cost: the part up to the second is formatted once per second."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second, prefix = self._cached  # one tuple: threads never see half an update
        if int(now) != second:
            second = int(now)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


_PLAIN = frozenset({int, float, bool, type(None)})


def _tidy(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """_lead_with_essentials, _redact_secrets and _printable in one pass over the event.

    The same result as those three in a row (the stdlib route still runs them one by one),
    for a third of the cost: ASCII text without ``://`` and numbers are only looked at.
    """
    line = {k: event_dict.pop(k) for k in _FIRST if k in event_dict}
    line.update(event_dict)
    for key, value in line.items():
        kind = type(value)
        if kind is str:
            if "://" in value:
                value = line[key] = _redacted(value)
            if not value.isascii():
                line[key] = escape_text(value)
        elif kind not in _PLAIN:
            line[key] = _printable_value(value)
    return line


# orjson options that keep the documented format: datetimes and dataclasses go to `default`
# (their escaped repr, as json did), dict keys that are not strings are allowed as in json
_ORJSON_OPTIONS = (
    (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS)
    if orjson is not None
    else 0
)


def _render_json(_logger: Any, _name: str, event_dict: dict[str, Any]) -> bytes:
    """One JSON object as UTF-8 bytes: orjson, or json for what orjson refuses (huge ints)."""
    if orjson is not None:
        try:
            return orjson.dumps(event_dict, default=_json_default, option=_ORJSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            pass  # json renders every value (NaN, ints past 64 bits): let it try
    return json.dumps(event_dict, default=_json_default, ensure_ascii=False).encode(
        "utf-8", "backslashreplace"
    )


def _render_json_text(logger: Any, name: str, event_dict: dict[str, Any]) -> str:
    """_render_json as text, for the stdlib formatter of third-party records."""
    return _render_json(logger, name, event_dict).decode("utf-8")


def _unrenderable_line(name: str, event: Any, exc: BaseException) -> bytes:
    """The line for an event that could not be rendered: it says so instead of vanishing."""
    return json.dumps(
        {
            "level": "error",
            "event": "log.unrenderable",
            "logger": name,
            "original_event": _json_default(event),
            "error": _json_default(exc),
        }
    ).encode("ascii")


class _Chain:
    """taskd's own processors run as one processor, which never raises.

    structlog runs processors in the caller: a value whose repr raises would fail the log call
    (and the task loop with it). One object, re-pointed by each configure_logging, also means
    loggers cached on first use follow a later configuration's format.
    """

    def __init__(self) -> None:
        self.processors: tuple[Any, ...] = ()

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        event = event_dict.get("event")
        try:
            for processor in self.processors:
                event_dict = processor(logger, name, event_dict)
        except Exception as exc:  # noqa: BLE001 - a log call must never fail its caller
            return _unrenderable_line(getattr(logger, "name", "?"), event, exc)
        return event_dict


class _Sink:
    """Where every line of the process goes: the configured stream, one line per write+flush.

    Bytes go to the stream's binary buffer (no text-layer encoding); a stream without one
    (io.StringIO) gets text. It shares the stdlib handler's lock so lines never interleave.
    A closed or broken stream drops the line silently: a log call never raises (the stdlib route
    does the same with ``logging.raiseExceptions = False``).
    """

    def __init__(self) -> None:
        self.lock: Any = threading.RLock()
        self.buffer: Any = None
        self.text: Any = sys.stdout

    def point_at(self, stream: Any, lock: Any) -> None:
        """Write to `stream` from now on (its buffer when it has one), under `lock`."""
        buffer = getattr(stream, "buffer", None)
        self.buffer = buffer if buffer is not None and hasattr(buffer, "flush") else None
        self.text = stream
        self.lock = lock

    def write(self, line: bytes | str) -> None:
        """One line, flushed; OSError/ValueError (closed, broken pipe, EAGAIN) dropped."""
        if type(line) is not bytes:
            line = str(line).encode("utf-8", "backslashreplace")
        with self.lock:
            try:
                if self.buffer is not None:
                    self.buffer.write(line + b"\n")
                    self.buffer.flush()
                else:
                    self.text.write(line.decode("utf-8") + "\n")
                    self.text.flush()
            except (OSError, ValueError):
                pass


_CHAIN = _Chain()
_SINK = _Sink()


class LineLogger:
    """structlog's final logger for taskd's events: the rendered line goes to the sink.

    Every level method is the same write (the level is already in the line); ``name`` is what
    ``_add_logger_name`` puts in the ``logger`` key.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, line: bytes | str) -> None:
        """Write one rendered line."""
        _SINK.write(line)

    debug = info = warning = warn = error = err = critical = fatal = exception = log = msg
    failure = msg


def _line_logger_factory(*args: Any) -> LineLogger:
    """``structlog.get_logger(name)`` -> a LineLogger named `name` ("taskd" without one)."""
    return LineLogger(str(args[0]) if args else "taskd")


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog (taskd's events) and stdlib logging (libraries) for the process.

    Meant to be called once per process, before the loggers are used: loggers are cached on
    first use with the level filter of the configuration in force (later calls still change
    the stream and the format of every logger).
    """
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console else _render_json_text
    )
    formatter = _NeverRaisingFormatter(  # third-party records only
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _lead_with_essentials,
            _printable,
            renderer,
        ],
    )
    if hasattr(stream, "reconfigure"):  # the last guard: a write never fails on encoding
        with contextlib.suppress(ValueError, OSError):  # a closed or detached stream
            stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logging.raiseExceptions = False  # a closed stdout must not turn every log line into a traceback
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    # taskd's own events: the same processors in the same order, so the same keys in the same
    # order, without the stdlib detour
    _CHAIN.processors = (
        _merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        _UtcIsoTimestamp(),
        structlog.processors.format_exc_info,
        _tidy,  # = _redact_secrets, then _lead_with_essentials and _printable
        renderer if use_console else _render_json,  # bytes: no decode, no re-encode
    )
    _SINK.point_at(stream, handler.lock)
    structlog.configure(
        processors=[_CHAIN],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=_line_logger_factory,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
