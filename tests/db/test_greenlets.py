"""SQLAlchemy's synchronous code run from coroutines in kept greenlets (db.greenlets)."""

import asyncio
import contextvars
import gc
import threading
import weakref
from collections.abc import AsyncIterator

import pytest
from greenlet import GreenletExit, getcurrent, greenlet
from sqlalchemy.engine import URL
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import await_

from devreg.db.greenlets import _IDLE, in_kept_greenlet

_SEEN = contextvars.ContextVar[str]("seen")


def _awaiting(value: int) -> tuple[int, object]:
    """Waits, the way SQLAlchemy's synchronous code waits, and says which greenlet it ran in."""
    return await_(asyncio.sleep(0.01, result=value)), getcurrent()


async def test_the_function_awaits_and_its_value_comes_back() -> None:
    value, first_worker = await in_kept_greenlet(lambda: _awaiting(1))
    assert value == 1
    value, second_worker = await in_kept_greenlet(lambda: _awaiting(2))
    assert value == 2
    assert second_worker is first_worker, "the greenlet is kept for the next call"
    assert first_worker is not getcurrent()


async def test_calls_at_once_each_get_a_greenlet_of_their_own() -> None:
    outcomes = await asyncio.gather(*(in_kept_greenlet(lambda n=n: _awaiting(n)) for n in range(5)))
    assert [value for value, _ in outcomes] == list(range(5))
    assert len({id(worker) for _, worker in outcomes}) == 5


async def test_what_the_function_raises_is_raised_and_the_greenlet_kept() -> None:
    def failing() -> object:
        await_(asyncio.sleep(0))
        raise LookupError("from the function")

    _, worker = await in_kept_greenlet(lambda: _awaiting(0))
    with pytest.raises(LookupError, match="from the function"):
        await in_kept_greenlet(failing)
    assert await in_kept_greenlet(lambda: _awaiting(3)) == (3, worker)


async def test_the_function_sees_the_callers_context_variables() -> None:
    async def in_a_task(name: str) -> str:
        _SEEN.set(name)
        return await in_kept_greenlet(_SEEN.get)

    assert await asyncio.gather(in_a_task("a"), in_a_task("b")) == ["a", "b"]


async def test_a_cancelled_caller_cancels_what_the_function_awaits() -> None:
    cleaned_up = asyncio.Event()

    def waiting_long() -> None:
        try:
            await_(asyncio.sleep(60))
        except asyncio.CancelledError:
            cleaned_up.set()
            raise

    task = asyncio.create_task(in_kept_greenlet(waiting_long))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up.is_set()
    assert await in_kept_greenlet(lambda: 5) == 5


@pytest.fixture
async def pool_of_one(committed_database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        committed_database_url, pool_size=1, max_overflow=0, pool_timeout=0.3
    )
    yield engine
    await engine.dispose()


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    return await in_kept_greenlet(engine.sync_engine.raw_connection)


async def test_a_checkout_waits_for_a_connection_in_use(pool_of_one: AsyncEngine) -> None:
    held = await _checkout(pool_of_one)
    waiting = asyncio.create_task(_checkout(pool_of_one))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    driver_connection = held.driver_connection
    held.close()
    taken = await waiting
    assert taken.driver_connection is driver_connection
    assert await taken.driver_connection.fetchval("SELECT 7") == 7
    taken.close()


async def test_a_checkout_that_waits_too_long_fails_and_leaves_the_pool_whole(
    pool_of_one: AsyncEngine,
) -> None:
    held = await _checkout(pool_of_one)
    with pytest.raises(PoolTimeout):
        await _checkout(pool_of_one)
    held.close()
    again = await _checkout(pool_of_one)
    assert await again.driver_connection.fetchval("SELECT 8") == 8
    again.close()
    assert pool_of_one.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_worker_collected_while_it_waits_ends() -> None:
    """greenlet ends a greenlet that is collected unfinished by raising GreenletExit in it: the
    worker must let it end, not hand it to a caller as its function's error and live on."""
    workers: list[greenlet] = []

    def waiting_forever() -> None:
        workers.append(getcurrent())
        await_(asyncio.Event().wait())

    task = asyncio.create_task(in_kept_greenlet(waiting_forever))
    await asyncio.sleep(0.01)
    (worker,) = workers
    worker.throw(GreenletExit)
    assert worker.dead
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _Held:
    """Something a call leaves behind, watched through a weak reference."""


_HELD = contextvars.ContextVar[_Held]("held")


class _Failure(Exception):
    def __init__(self, held: _Held) -> None:
        self.held = held


async def test_an_idle_worker_holds_nothing_of_the_calls_it_ran() -> None:
    """Not the function it started with (an engine's method, with the engine), nor the
    caller's context variables, nor, once the caller is done with it, what it raised."""
    watched: list[weakref.ref[_Held]] = []

    def held() -> _Held:
        made = _Held()
        watched.append(weakref.ref(made))
        return made

    def failing() -> None:
        raise _Failure(held())

    async def calls() -> None:
        _HELD.set(_Held())
        function_held = held()
        await in_kept_greenlet(lambda: function_held)
        with pytest.raises(_Failure):
            await in_kept_greenlet(failing)

    gc.disable()  # what only the cyclic collector would free counts as held
    try:
        await asyncio.create_task(calls())
        function_held, raised_held = watched
        assert function_held() is None
        assert raised_held() is None
    finally:
        gc.enable()
    assert [worker.gr_context for worker in _IDLE.workers] == [None] * len(_IDLE.workers)


def test_a_threads_workers_end_with_it() -> None:
    async def checkout_like() -> None:
        await in_kept_greenlet(lambda: await_(asyncio.sleep(0)))

    def in_a_thread() -> None:
        asyncio.run(checkout_like())
        workers.append(weakref.ref(_IDLE.workers[0]))

    workers: list[weakref.ref[greenlet]] = []
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    gc.collect()
    assert len(workers) == 1
    assert workers[0]() is None
