"""SQLAlchemy's synchronous code run from a coroutine, as `greenlet_spawn` runs it, in greenlets
kept for the next call instead of one made for each.

A hot-path request checks its connection out of SQLAlchemy's pool this way (db.driver). Making
a greenlet costs more in the kernel than in Python (its frame stack is mapped and unmapped each
time): a no-op `greenlet_spawn` took 7.6 µs against 0.9 µs in a kept greenlet, and a GET served
in-process 22 µs less CPU (docs/benchmarks.md)."""

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")

_DONE = object()
"""What a worker switches to its caller with when its function has returned or raised."""

_KEPT_AT_MOST = 64
"""Idle workers a thread keeps: as many as its checkouts that wait at once, within reason."""


class _Worker(greenlet):
    """A greenlet that runs one function after another (`_serve`)."""

    # SQLAlchemy's await_ runs only in a greenlet that says it provides it, as greenlet_spawn's
    # do: it hands each awaitable to the greenlet's parent, the caller, to await.
    __sqlalchemy_greenlet_provider__ = True

    def __init__(self) -> None:
        super().__init__(_serve)
        self.returned: Any = None
        self.raised: BaseException | None = None


def _current_worker() -> _Worker:
    return cast(_Worker, getcurrent())


def _serve() -> None:
    # Started without arguments (greenlet keeps those as long as the greenlet lives: a first
    # function, an engine's method, would live as long), and no local holds the worker itself
    # (a suspended greenlet in a cycle with itself outlives its thread).
    function: Callable[[], Any] | None = _switch_to_caller()
    while function is not None:
        try:
            returned = function()
        except GreenletExit:
            # The worker itself is being collected, unfinished: it ends, as a greenlet must.
            raise
        except BaseException as exc:  # the caller raises it
            _current_worker().raised = exc
        else:
            _current_worker().returned = returned
            del returned
        function = None
        function = _switch_to_caller()


def _switch_to_caller() -> Any:
    caller = getcurrent().parent
    assert caller is not None, "in_kept_greenlet sets it for each call"
    return caller.switch(_DONE)


class _Idle(threading.local):
    """A thread's workers not in use (a greenlet runs only in the thread that made it)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []


_IDLE = _Idle()


async def in_kept_greenlet(function: Callable[[], T]) -> T:
    """`function()`, with SQLAlchemy's `await_` available to it, as greenlet_spawn runs it."""
    idle = _IDLE.workers
    worker = idle.pop() if idle else _Worker()
    caller = getcurrent()
    worker.parent = caller
    if not worker:  # a new one starts, and waits for its first function
        worker.switch()
    worker.gr_context = caller.gr_context  # the caller's context variables, as greenlet_spawn
    outcome = worker.switch(function)
    while outcome is not _DONE:
        if worker.dead:  # ended by a GreenletExit that what it awaited raised
            raise GreenletExit
        try:
            value = await outcome
        except BaseException:
            outcome = worker.throw(*sys.exc_info())
        else:
            outcome = worker.switch(value)
    returned, raised = worker.returned, worker.raised
    worker.returned = worker.raised = None
    worker.gr_context = None  # nothing of the caller's kept alive by an idle worker
    if len(idle) < _KEPT_AT_MOST:
        idle.append(worker)
    if raised is None:
        return cast(T, returned)
    try:
        raise raised
    finally:
        del raised  # else a cycle: its traceback holds this frame, which holds it
