"""How many requests a worker works on at once; the others wait their turn, in arrival order.

Under a load above what a worker can serve, uvloop runs newly arrived requests ahead of those
already in progress, so a few requests wait many times as long as the rest: at 64 connections
on one worker the slowest 1% took 1.0 to 1.5 s against a median of 0.06 s. Admitting 8 at a
time, first come first served, brought that to 0.2 to 0.4 s, for up to 30% fewer requests
served (the queue itself costs CPU); admitting 16 kept 0.45 s for 5 to 9% fewer. The standard
asyncio loop is fair too, but serves about 15% fewer. See docs/benchmarks.md.
"""

import asyncio

from devreg.errors import PoolExhausted


class Admission:
    """At most `limit` requests in progress; a request waits at most `timeout` seconds for its
    turn, then is refused with a 503 (PoolExhausted), as when no database connection is free."""

    def __init__(self, limit: int, *, timeout: float) -> None:
        self._turns = asyncio.Semaphore(limit)
        self._timeout = timeout

    def turn(self) -> "Turn":
        return Turn(self._turns, self._timeout)


class Turn:
    """A request's turn, as an async context manager; it may end early, once its response has
    started (a streamed export should not hold a turn while a slow client reads it)."""

    def __init__(self, turns: asyncio.Semaphore, timeout: float) -> None:
        self._turns = turns
        self._timeout = timeout
        self._held = False
        self._over = False

    async def __aenter__(self) -> "Turn":
        await self.take()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.end()

    async def take(self) -> None:
        """Wait for a turn, at most the timeout (then PoolExhausted); none once it is over."""
        if self._over:
            return
        # A free turn is taken at once; only waiting needs a timer (the costly part).
        if self._turns.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._turns.acquire()
            except TimeoutError:
                raise PoolExhausted from None
        else:
            await self._turns.acquire()
        self._held = True
        if self._over:  # the response started while this waited
            self.release()

    def release(self) -> bool:
        """Give the turn up for now (take may take it back); whether it was held."""
        if not self._held:
            return False
        self._held = False
        self._turns.release()
        return True

    def end(self) -> None:
        """Give the turn up for good: the response has started (or the request is done)."""
        self._over = True
        self.release()
