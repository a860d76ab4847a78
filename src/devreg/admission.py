"""How many requests a worker works on at once; the others wait their turn, in arrival order.

Under a load above what a worker can serve, uvloop runs newly arrived requests ahead of those
already in progress, so a few requests wait many times as long as the rest: at 64 connections
on one worker the slowest 1% took 0.5 to 0.7 s against a median of 0.06 s. Admitting a few at
a time, first come first served, brought that to about 0.15 s at the same throughput (the
standard asyncio loop is fair too, but serves about 15% fewer requests). See docs/benchmarks.md.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from devreg.errors import PoolExhausted


class Admission:
    """At most `limit` requests in progress; a request waits at most `timeout` seconds for its
    turn, then is refused with a 503 (PoolExhausted), as when no database connection is free."""

    def __init__(self, limit: int, *, timeout: float) -> None:
        self._turns = asyncio.Semaphore(limit)
        self._timeout = timeout

    @asynccontextmanager
    async def turn(self) -> AsyncIterator["Turn"]:
        try:
            async with asyncio.timeout(self._timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise PoolExhausted from None
        turn = Turn(self._turns)
        try:
            yield turn
        finally:
            turn.end()


class Turn:
    """A request's turn; it may end early, once its response has started (a streamed export
    should not hold a turn while a slow client reads it)."""

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self._turns: asyncio.Semaphore | None = turns

    def end(self) -> None:
        if self._turns is not None:
            self._turns.release()
            self._turns = None
