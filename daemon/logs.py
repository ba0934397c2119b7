"""structlog configuration: JSON lines on stdout (console rendering on a TTY), done once.

Library logs (redis-py, the stdlib) go through the same renderer, so every line of a taskd
process is one JSON object with an ISO UTC timestamp, a level and an event.

Logging never raises and never writes what is not text: a handler's error may carry lone
surrogates (a file name decoded with surrogateescape) or bytes, and the loop logs it as it is.
Those are escaped (``\\udcff``, ``\\xff``) so every line is valid UTF-8 for any log shipper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from daemon import redis_url


def _redact_secrets(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: any value that looks like a URL with credentials is redacted."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            try:
                event_dict[key] = redis_url.redact(value)
            except Exception:  # noqa: BLE001 - logging must not raise; hide it all instead
                event_dict[key] = "<redacted: looked like a URL with credentials>"
    return event_dict


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


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and stdlib logging for the whole process."""
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
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(default=_json_default)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level events before any work
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = _NeverRaisingFormatter(
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
