"""Task handlers: loading a user's ``module:function`` and the built-in ones.

Handler contract: ``function(body: bytes) -> None``, a plain ``def`` or an ``async def``.
Returning means success (the task is acked); raising anything, even ``SystemExit`` or
``KeyboardInterrupt``, means failure (retried with backoff, dead-lettered after --max-attempts).
`load` returns the function wrapped so that the loops, which catch ``Exception``, only ever see
success or an ``Exception`` they can render; what cannot be a handler is refused at startup.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import importlib
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from daemon.config import ConfigError

Handler = Callable[[bytes], object]

LOOP_CLOSE_TIMEOUT = 2.0  # seconds at exit for what async handlers left running to finish

_log = structlog.get_logger("taskd.handler")


class HandlerError(Exception):
    """The handler failed in a way its own exception cannot report; taskd says what happened."""


class HandlerAborted(HandlerError):
    """The handler raised a BaseException (SystemExit, KeyboardInterrupt...): a failed attempt.

    Only taskd's own signal handlers stop the loops, so such an exception came from the
    handler (a sys.exit() or an argparse error inside it), not from the operator.
    """


def load(path: str) -> Callable[[bytes], None]:
    """Import `module:function` and wrap it for the loops (see `wrap`).

    The current directory is importable, as users expect. Raises ConfigError with one line
    naming the path and what was expected.
    """
    return wrap(_import(path), path)


def _import(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--handler={path!r}: expected module:function, e.g. daemon.handlers:log")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--handler={path!r}: cannot import module {module_name!r} ({exc}); "
            "expected an importable module:function"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(
            f"--handler={path!r}: importing {module_name!r} failed "
            f"({type(exc).__name__}: {exc}); expected an importable module:function"
        ) from None
    function = getattr(module, attr, None)
    if function is None:
        raise ConfigError(
            f"--handler={path!r}: module {module_name!r} has no attribute {attr!r}; "
            "expected module:function"
        )
    return function


_EXPECTED = "expected a function (def or async def) called with the task body"


def wrap(function: Any, path: str = "handler") -> Callable[[bytes], None]:
    """The callable the loops call: `function` run to completion, any failure an Exception.

    A coroutine function runs on this thread's event loop; a plain function is called directly
    (its only cost a try/except and a None check). Raises ConfigError for what can never be a
    handler: not callable, a class, a generator function, a wrong signature.
    """
    refusal = _refusal(function)
    if refusal:
        raise ConfigError(f"--handler={path!r}: {_name(path)} {refusal}; {_EXPECTED}")
    _check_signature(function, path)
    if inspect.iscoroutinefunction(_code_owner(function)):
        return _async_handler(function)
    return _sync_handler(function)


def _refusal(function: Any) -> str:
    """Why `function` can never be a handler, or "" when it can."""
    if not callable(function):
        return f"is {_article(type(function).__name__)}, not callable"
    if isinstance(function, type):
        return "is a class (calling it only makes an instance)"
    code = _code_owner(function)
    if inspect.isgeneratorfunction(code) or inspect.isasyncgenfunction(code):
        return "is a generator function (calling it runs nothing until iterated)"
    return ""


def _name(path: str) -> str:
    return repr(path.rpartition(":")[2] or path)


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _code_owner(function: Any) -> Any:
    """What holds the code run by calling `function`: itself, or its class's __call__."""
    if inspect.isroutine(function) or isinstance(function, functools.partial):
        return function
    return type(function).__call__


def _check_signature(function: Any, path: str) -> None:
    """Refuse at startup a function that cannot take the body, rather than fail every task."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: trust them
        return
    try:
        signature.bind(b"")
    except TypeError as exc:
        raise ConfigError(
            f"--handler={path!r}: {_name(path)} takes {signature}, it cannot be called with "
            f"one argument ({exc}); {_EXPECTED}"
        ) from None


def _sync_handler(function: Callable[[bytes], object]) -> Callable[[bytes], None]:
    def call(body: bytes) -> None:
        try:
            result = function(body)
            if result is not None:  # a plain def returns None: that case costs nothing more
                _complete(result)
        except Exception as exc:
            _check_renderable(exc)
            raise
        except BaseException as exc:
            raise HandlerAborted(f"{_describe(exc)} raised by the handler") from exc

    return functools.update_wrapper(call, function, updated=())


def _async_handler(function: Callable[[bytes], Any]) -> Callable[[bytes], None]:
    def run(body: bytes) -> None:
        run_coroutine(function(body))

    call = functools.update_wrapper(_sync_handler(run), function, updated=())
    call.__taskd_coroutine__ = _async_call(function)  # type: ignore[attr-defined]
    return call


AsyncHandler = Callable[[bytes], Coroutine[Any, Any, None]]


def coroutine_function(handler: Callable[[bytes], object]) -> AsyncHandler | None:
    """The `async def` behind a loaded handler, guarded as `wrap` guards it; None for a plain one.

    --concurrency runs it as many coroutines on one event loop instead of one at a time.
    """
    return getattr(handler, "__taskd_coroutine__", None)


def _async_call(function: Callable[[bytes], Any]) -> AsyncHandler:
    async def call(body: bytes) -> None:
        try:
            await function(body)
        except Exception as exc:
            _check_renderable(exc)
            raise
        except BaseException as exc:
            raise HandlerAborted(f"{_describe(exc)} raised by the handler") from exc

    return call


def _complete(result: object) -> None:
    """A plain function returned something: run it if it is awaitable, refuse a generator."""
    if inspect.iscoroutine(result):
        run_coroutine(result)
    elif inspect.isawaitable(result):
        run_coroutine(_await(result))
    elif inspect.isgenerator(result) or inspect.isasyncgen(result):
        if inspect.isgenerator(result):
            result.close()  # never started: closing runs nothing, only frees it
        raise HandlerError(
            f"the handler returned a {type(result).__name__} object without doing its work: "
            "a handler must run to completion when called (generators are not handlers)"
        )


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _describe(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:  # a repr that raises: say what we can
        return f"{type(exc).__name__}(<repr failed>)"


def _check_renderable(exc: Exception) -> None:
    """An exception whose str() raises would crash whoever logs it: replace it, saying so."""
    try:
        str(exc)
    except Exception as err:
        raise HandlerError(
            f"{type(exc).__name__} raised by the handler; its message could not be rendered "
            f"({type(err).__name__} in __str__)"
        ) from exc
    except BaseException as err:  # traceback formatting would re-raise this one: no chain
        raise HandlerError(
            f"{type(exc).__name__} raised by the handler; its message could not be rendered "
            f"({type(err).__name__} in __str__)"
        ) from None


# -- event loops for coroutine handlers -----------------------------------------------------
_local = threading.local()
_loops: list[asyncio.AbstractEventLoop] = []
_loops_lock = threading.Lock()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, created at its first coroutine and reused for every task.

    One long-lived loop (not asyncio.run per task) so that clients an async handler keeps
    between tasks (connection pools, sessions) stay bound to a live loop.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
        with _loops_lock:
            if not _loops:
                atexit.register(close_event_loops)
            _loops.append(loop)
    return loop


def handler_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for many concurrent coroutine handlers (--concurrency), known to
    `coroutine_stacks` so a stall dump shows where each of its coroutines waits."""
    loop = asyncio.new_event_loop()
    with _loops_lock:
        if not _loops:
            atexit.register(close_event_loops)
        _loops.append(loop)
    return loop


def run_coroutine(coroutine: Coroutine[Any, Any, object]) -> object:
    """Run a handler's coroutine to completion on this thread's loop, synchronously.

    Synchronous, so the task timeout (the stall detector, which watches the loop's progress)
    applies as to any handler. The coroutine runs in a copy of the caller's context: it sees
    the log bindings of its task, and what it binds does not leak into the loop.
    """
    loop = _thread_loop()
    task = loop.create_task(coroutine, context=contextvars.copy_context())
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():  # interrupted from outside: it must not resume in the next task
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning later
        raise


def coroutine_stacks() -> str:
    """The stacks of the coroutines on handler loops, for a stall dump (thread stacks stop at
    the loop's select: they do not show where a hung async handler awaits)."""
    with _loops_lock:
        loops = [loop for loop in _loops if not loop.is_closed()]
    parts: list[str] = []
    for loop in loops:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed under us (another thread): skip this dump
            continue
        parts.extend(_awaiting(task) for task in tasks)
    return "\n".join(parts)


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where `task` waits: its coroutine and each one it awaits, down to the innermost
    (Task.print_stack shows the outermost frame only: the wrapper, not the handler's await)."""
    frames: list[tuple[Any, int]] = []
    coro: Any = task.get_coro()
    while coro is not None and len(frames) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    stack = traceback.StackSummary.extract(frames)
    return f"Stack for {task!r} (outermost first):\n" + "".join(stack.format())


def close_event_loops(timeout: float = LOOP_CLOSE_TIMEOUT) -> None:
    """At exit: cancel what async handlers left running (bounded wait), then close the loops."""
    with _loops_lock:
        loops, _loops[:] = list(_loops), []
    for loop in loops:
        if loop.is_running() or loop.is_closed():
            continue
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=timeout))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), timeout))
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say why it was not clean
            _log.warning("handler.event_loop_close_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            loop.close()


def _preview(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > limit else "")


def log(body: bytes) -> None:
    """Log the task and succeed: the handler of `make run`, to watch tasks flow."""
    _log.info("task.body", body=_preview(body), size=len(body))


def noop(body: bytes) -> None:
    """Succeed at once (benchmarks)."""


def sleep(body: bytes) -> None:
    """Sleep for the number of seconds in the body (default 1), then succeed."""
    try:
        seconds = float(body.decode("ascii").strip() or 1)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            f"sleep handler expects a number of seconds, got {_preview(body)!r}"
        ) from None
    time.sleep(max(0.0, seconds))


def fail(body: bytes) -> None:
    """Always fail (to exercise retries and dead letters)."""
    raise RuntimeError(f"fail handler refused task {_preview(body, 60)!r}")
