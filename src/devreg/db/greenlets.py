"""SQLAlchemy's synchronous code run from a coroutine, as `greenlet_spawn` runs it, in greenlets
kept for the next call instead of one made for each.

A hot-path request checks its connection out of SQLAlchemy's pool this way (db.driver). Making
the greenlet was most of that checkout: 7.6 µs of a no-op `greenlet_spawn` against 0.9 µs in a
kept greenlet, and about a tenth of a GET's CPU in a server (docs/benchmarks.md)."""

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")


_DONE = object()
"""What a worker switches to its caller with when its function has returned or raised."""


class _Worker(greenlet):
    """A greenlet that runs one function after another. SQLAlchemy's `await_` runs in it as in
    one of `greenlet_spawn`'s: it hands each awaitable to the parent, the caller's greenlet,
    which awaits it and switches back with its outcome."""

    __sqlalchemy_greenlet_provider__ = True

    def __init__(self) -> None:
        super().__init__(self._serve)
        self.returned: Any = None
        self.raised: BaseException | None = None

    def _serve(self, function: Callable[[], Any] | None) -> None:
        while function is not None:
            try:
                self.returned = function()
            except GreenletExit:
                # The worker itself collected while it waited (its caller gone): it ends, as a
                # greenlet must, instead of switching to a caller that waits for nothing.
                raise
            except BaseException as exc:  # handed to the caller, who raises it
                self.raised = exc
            # Nothing of this call is held while the worker waits for the next one.
            function = None
            caller = self.parent
            assert caller is not None, "run_synchronously sets it for each call"
            function = caller.switch(_DONE)


class _Idle(threading.local):
    """A thread's workers not in use (a greenlet runs only in the thread that made it)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []


_IDLE = _Idle()


async def run_synchronously(function: Callable[[], T]) -> T:
    """`function()` with SQLAlchemy's `await_` available to it, as in `greenlet_spawn`."""
    idle = _IDLE.workers
    worker = idle.pop() if idle else _Worker()
    caller = getcurrent()
    worker.parent = caller
    # The function sees the caller's context variables, as in greenlet_spawn.
    worker.gr_context = caller.gr_context
    outcome = worker.switch(function)
    while outcome is not _DONE:
        try:
            value = await outcome
        except BaseException:
            outcome = worker.throw(*sys.exc_info())
        else:
            outcome = worker.switch(value)
    returned, raised = worker.returned, worker.raised
    worker.returned = worker.raised = None
    idle.append(worker)
    if raised is not None:
        raise raised
    return cast(T, returned)
