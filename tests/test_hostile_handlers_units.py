"""The handler wrapper (daemon.handlers.wrap) and log rendering, in-process and fast.

The wrapper is what the loops call: success, or an Exception they can render. Every
BaseException a handler raises becomes a failed attempt; coroutines really run; what can never
be a handler is a one-line ConfigError at startup. Logging never raises on text that is not
valid Unicode.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import io
import json
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from daemon import handlers, logs
from daemon.config import ConfigError
from daemon.handlers import HandlerAborted, HandlerError

SURROGATE_NAME = b"report-\xff.csv".decode("utf-8", "surrogateescape")


# -- plain and async handlers run to completion ------------------------------------------------
def test_plain_handler_is_called_with_the_body_and_success_returns_none() -> None:
    seen: list[bytes] = []
    call = handlers.wrap(seen.append, "t:append")
    assert call(b"body") is None
    assert seen == [b"body"]


def test_async_handler_really_runs_on_one_loop_reused_for_every_task() -> None:
    loops: list[int] = []

    async def handler(body: bytes) -> None:
        await asyncio.sleep(0)
        loops.append(id(asyncio.get_running_loop()))

    call = handlers.wrap(handler, "t:handler")
    for _ in range(3):
        call(b"x")
    assert len(loops) == 3 and len(set(loops)) == 1


def test_each_thread_has_its_own_handler_loop() -> None:
    loops: list[int] = []

    async def handler(body: bytes) -> None:
        loops.append(id(asyncio.get_running_loop()))

    call = handlers.wrap(handler, "t:handler")
    call(b"main")
    thread = threading.Thread(target=call, args=(b"other",))
    thread.start()
    thread.join(10)
    assert len(set(loops)) == 2


def test_coroutine_sees_the_callers_context_and_does_not_leak_into_it() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def handler(body: bytes) -> None:
        seen.append(var.get())
        var.set("changed by the handler")

    call = handlers.wrap(handler, "t:handler")
    for value in ("task-1", "task-2"):
        var.set(value)
        call(b"x")
        assert var.get() == value
    assert seen == ["task-1", "task-2"]


def test_async_handler_that_raises_raises_the_same_exception() -> None:
    async def handler(body: bytes) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad task")

    with pytest.raises(ValueError, match="bad task"):
        handlers.wrap(handler, "t:handler")(b"x")


class _AwaitableResult:
    def __init__(self) -> None:
        self.awaited = False

    def __await__(self) -> Iterator[None]:
        self.awaited = True
        return iter(())


def test_plain_function_returning_an_awaitable_has_it_run() -> None:
    ran: list[bytes] = []

    async def work(body: bytes) -> None:
        ran.append(body)

    handlers.wrap(lambda body: work(body), "t:lambda")(b"coroutine")
    result = _AwaitableResult()
    handlers.wrap(lambda body: result, "t:lambda")(b"awaitable")
    assert ran == [b"coroutine"] and result.awaited


def test_plain_function_returning_a_value_succeeds() -> None:
    assert handlers.wrap(len, "builtins:len")(b"abc") is None


def test_plain_function_returning_a_generator_is_a_failed_attempt() -> None:
    def make(body: bytes) -> Iterator[bytes]:
        yield body

    with pytest.raises(HandlerError, match="returned a generator object without doing its work"):
        handlers.wrap(lambda body: make(body), "t:lambda")(b"x")


def test_callable_instance_and_partial_of_async_functions_are_run_as_coroutines() -> None:
    ran: list[str] = []

    class AsyncCallable:
        async def __call__(self, body: bytes) -> None:
            ran.append("instance")

    async def two(tag: str, body: bytes) -> None:
        ran.append(tag)

    handlers.wrap(AsyncCallable(), "t:instance")(b"x")
    handlers.wrap(functools.partial(two, "partial"), "t:partial")(b"x")
    assert ran == ["instance", "partial"]


# -- BaseException from a handler is a failed attempt -----------------------------------------
class _OwnBaseException(BaseException):
    pass


def _raiser(exc: BaseException) -> Any:
    def handler(body: bytes) -> None:
        raise exc

    return handler


def _async_raiser(exc: BaseException) -> Any:
    async def handler(body: bytes) -> None:
        await asyncio.sleep(0)
        raise exc

    return handler


@pytest.mark.parametrize("make", [_raiser, _async_raiser], ids=["def", "async def"])
@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (SystemExit(0), "SystemExit(0) raised by the handler"),
        (SystemExit(3), "SystemExit(3) raised by the handler"),
        (SystemExit(), "SystemExit() raised by the handler"),
        (KeyboardInterrupt(), "KeyboardInterrupt() raised by the handler"),
        (GeneratorExit(), "GeneratorExit() raised by the handler"),
        (asyncio.CancelledError(), "CancelledError() raised by the handler"),
        (_OwnBaseException("x"), "_OwnBaseException('x') raised by the handler"),
    ],
)
def test_base_exception_from_handler_becomes_handler_aborted_chained_to_it(
    make: Any, exc: BaseException, message: str
) -> None:
    call = handlers.wrap(make(exc), "t:handler")
    with pytest.raises(HandlerAborted) as caught:
        call(b"x")
    assert isinstance(caught.value, Exception)
    assert str(caught.value) == message
    assert caught.value.__cause__ is exc
    logged = "".join(traceback.format_exception(caught.value))
    assert "in handler" in logged and "direct cause" in logged  # the handler's own frames


def test_async_loop_still_serves_tasks_after_an_aborted_coroutine() -> None:
    with pytest.raises(HandlerAborted):
        handlers.wrap(_async_raiser(SystemExit(1)), "t:h")(b"x")
    with pytest.raises(HandlerAborted):
        handlers.wrap(_async_raiser(KeyboardInterrupt()), "t:h")(b"x")
    ran: list[bytes] = []

    async def ok(body: bytes) -> None:
        await asyncio.sleep(0)
        ran.append(body)

    handlers.wrap(ok, "t:ok")(b"after")
    assert ran == [b"after"]


def test_sys_exit_inside_argparse_in_a_handler_is_a_failed_attempt() -> None:
    import argparse

    def handler(body: bytes) -> None:
        parser = argparse.ArgumentParser(prog="handler")
        parser.add_argument("--count", type=int, required=True)
        parser.parse_args(body.decode().split())

    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        with pytest.raises(HandlerAborted, match=r"SystemExit\(2\) raised by the handler"):
            handlers.wrap(handler, "t:handler")(b"--count nope")
    finally:
        sys.stderr = stderr


# -- errors that cannot be rendered -----------------------------------------------------------
class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken")


class _ExitingStr(Exception):
    def __str__(self) -> str:
        raise SystemExit(9)


def test_exception_whose_str_raises_becomes_a_renderable_handler_error() -> None:
    with pytest.raises(HandlerError) as caught:
        handlers.wrap(_raiser(_BrokenStr()), "t:h")(b"x")
    assert str(caught.value) == (
        "_BrokenStr raised by the handler; its message could not be rendered "
        "(RuntimeError in __str__)"
    )
    assert isinstance(caught.value.__cause__, _BrokenStr)
    "".join(traceback.format_exception(caught.value))  # what the consumer logs: no raise


def test_exception_whose_str_exits_is_not_chained_so_formatting_cannot_exit() -> None:
    with pytest.raises(HandlerError, match="SystemExit in __str__") as caught:
        handlers.wrap(_raiser(_ExitingStr()), "t:h")(b"x")
    assert caught.value.__suppress_context__
    "".join(traceback.format_exception(caught.value))


def test_exception_with_lone_surrogate_is_raised_as_it_is() -> None:
    exc = FileNotFoundError(f"no such input file: {SURROGATE_NAME}")
    with pytest.raises(FileNotFoundError) as caught:
        handlers.wrap(_raiser(exc), "t:h")(b"x")
    assert caught.value is exc


# -- refused at startup -----------------------------------------------------------------------
def _generator(body: bytes) -> Iterator[bytes]:
    yield body


async def _async_generator(body: bytes) -> Any:
    yield body


class _GeneratorCall:
    def __call__(self, body: bytes) -> Iterator[bytes]:
        yield body


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (_generator, "'fn' is a generator function"),
        (_async_generator, "'fn' is a generator function"),
        (_GeneratorCall(), "'fn' is a generator function"),
        (_BrokenStr, "'fn' is a class"),
        (42, "'fn' is an int, not callable"),
        (lambda: None, "'fn' takes (), it cannot be called with one argument"),
        (lambda a, b: None, "'fn' takes (a, b), it cannot be called with one argument"),
    ],
)
def test_what_cannot_be_a_handler_is_a_one_line_config_error(target: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        handlers.wrap(target, "mod:fn")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--handler='mod:fn': ")
    assert expected in message
    assert message.endswith("expected a function (def or async def) called with the task body")


def test_a_builtin_handler_loads_wrapped_and_runs() -> None:
    call = handlers.load("daemon.handlers:noop")
    assert call.__wrapped__ is handlers.noop  # type: ignore[attr-defined]
    assert call(b"x") is None


# -- loops at exit, stacks for the stall dump -------------------------------------------------
def test_coroutine_stacks_show_where_a_hung_async_handler_awaits() -> None:
    started = threading.Event()

    async def stuck_here(body: bytes) -> None:
        started.set()
        await asyncio.sleep(3600)

    call = handlers.wrap(stuck_here, "t:stuck")
    thread = threading.Thread(target=call, args=(b"x",), daemon=True)
    thread.start()
    assert started.wait(10)
    assert "in stuck_here" in handlers.coroutine_stacks()


def test_close_event_loops_cancels_leftovers_within_its_deadline() -> None:
    leftovers: list[asyncio.Task[None]] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # refuses to stop: the deadline must still hold

    async def handler(body: bytes) -> None:
        leftovers.append(asyncio.get_running_loop().create_task(stubborn()))

    result: list[bool] = []

    def in_thread() -> None:
        handlers.wrap(handler, "t:h")(b"x")
        loop = leftovers[0].get_loop()
        result.append(loop.is_closed())
        handlers.close_event_loops(timeout=0.2)
        result.append(loop.is_closed())

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert result == [False, True]
    leftovers.clear()
    gc.collect()  # asyncio's "Task was destroyed but it is pending" warning: here, not later


# -- logging never raises on text that is not valid Unicode ------------------------------------
@pytest.fixture
def log_output() -> Iterator[Any]:
    """configure_logging onto a strict UTF-8 stream; the previous logging restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.raiseExceptions)
    streams: list[io.TextIOWrapper] = []

    def configure(fmt: str) -> io.TextIOWrapper:
        stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        streams.append(stream)
        logs.configure_logging("info", fmt, stream)
        return stream

    yield configure
    structlog.reset_defaults()
    root.handlers[:], level, logging.raiseExceptions = saved
    root.setLevel(level)


def _written(stream: io.TextIOWrapper) -> bytes:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue()


def _log_hostile_lines() -> None:
    log = structlog.get_logger("taskd.test")
    log.warning(
        f"event {SURROGATE_NAME}",
        error=f"FileNotFoundError: no such input file: {SURROGATE_NAME}",
        body=b"\xff\xfe not utf-8",
        names=[SURROGATE_NAME],
        fine="é ✓",
    )
    try:
        raise FileNotFoundError(f"no such input file: {SURROGATE_NAME}")
    except FileNotFoundError:
        log.error("with.traceback", exc_info=True)
    logging.getLogger("library").warning("foreign %s", SURROGATE_NAME)


def test_json_log_lines_escape_lone_surrogates_and_undecodable_bytes(log_output: Any) -> None:
    stream = log_output("json")
    _log_hostile_lines()
    lines = [json.loads(line) for line in _written(stream).decode("utf-8").splitlines()]
    lines = [line for line in lines if line["logger"] in ("taskd.test", "library")]
    assert [line["event"] for line in lines] == [
        "event report-\\udcff.csv",
        "with.traceback",
        "foreign report-\\udcff.csv",
    ]
    first = lines[0]
    assert first["error"] == "FileNotFoundError: no such input file: report-\\udcff.csv"
    assert first["body"] == "\\xff\\xfe not utf-8"
    assert first["names"] == ["report-\\udcff.csv"]
    assert first["fine"] == "é ✓"
    assert "no such input file: report-\\udcff.csv" in lines[1]["exception"]
    for line in lines:  # nothing a strict UTF-8 consumer would choke on
        json.dumps(line, ensure_ascii=False).encode("utf-8")


def test_console_log_lines_escape_lone_surrogates(log_output: Any) -> None:
    stream = log_output("console")
    _log_hostile_lines()
    text = _written(stream).decode("utf-8")
    assert "event report-\\udcff.csv" in text
    assert "with.traceback" in text and "FileNotFoundError" in text
    assert "foreign report-\\udcff.csv" in text


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_value_whose_repr_raises_never_fails_the_log_call(log_output: Any) -> None:
    stream = log_output("json")
    structlog.get_logger("taskd.test").info("odd.value", value=_BadRepr())
    (line,) = [json.loads(x) for x in _written(stream).decode().splitlines()]
    assert line["event"] == "odd.value" and line["value"] == "<_BadRepr: repr failed>"
    stream = log_output("console")
    structlog.get_logger("taskd.test").info("odd.value", value=_BadRepr())
    assert "log.unrenderable" in _written(stream).decode()
