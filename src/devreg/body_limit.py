"""Bounded request bodies: no client makes a worker buffer more than its route allows, or wait
for a body longer than BODY_TIMEOUT.

Starlette's own limit answers a plain-text 413 in place of whatever the app answers, so devreg
keeps its own, answering RFC 9457 problems like every other error."""

import asyncio
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from devreg.admission import Turn
from devreg.errors import PoolExhausted


def too_large(limit: int) -> str:
    return f"The request body is larger than the {limit} bytes this route takes."


class BodyLimits:
    """A size limit per path: `limits` maps paths (whole: `/devices/bulk`, not `/devices/bulkx`)
    to limits other than `default`; and `timeout`, the seconds any body may take to arrive."""

    def __init__(self, *, default: int, limits: Mapping[str, int], timeout: float) -> None:
        self.default = default
        self.limits = dict(limits)
        self.timeout = timeout

    def limit_for(self, path: str) -> int:
        return self.limits.get(path, self.default)

    def receive_within(self, receive: Receive, limit: int) -> Receive:
        """`receive` for a request beginning now, raising a 413 as soon as the bytes received
        pass `limit` (limit_for its path), and a 408 when the body is still incomplete `timeout`
        seconds from now. Once the body is whole, it waits as long as it takes (for a
        disconnect)."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        timeout = self.timeout
        received = 0
        body_complete = False

        async def receive_within_limits() -> Message:
            nonlocal received, body_complete
            if body_complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # The rest of the body may still come: the connection cannot carry another
                # request after it (RFC 9110, 15.5.9).
                raise HTTPException(
                    408, detail=too_slow(timeout), headers={"Connection": "close"}
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=too_large(limit))
                body_complete = not message.get("more_body", False)
            return message

        return receive_within_limits


def declared_too_large(content_length: bytes | None, limit: int) -> bool:
    """Whether Content-Length already says the body is over the limit."""
    return content_length is not None and content_length.isdigit() and int(content_length) > limit


def too_slow(timeout: float) -> str:
    return f"The request body did not arrive within {timeout:g} seconds."


def declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request says a body follows (ASGI gives header names in lower case)."""
    return any(
        (name == b"content-length" and value.strip() not in (b"", b"0"))
        or name == b"transfer-encoding"
        for name, value in headers
    )


# Seconds a body may take to arrive with its request's turn held: most come with their head, and
# giving the turn up for each would put every write under load in the queue twice.
_BODY_GRACE = 0.05


def whole_body_without(turn: Turn, receive: Receive) -> Receive:
    """`receive` whose first call gives the whole body; if it takes longer than a moment to
    arrive, it is read without the request's turn: a client sending it slowly would hold the
    turn meanwhile, every other request waiting, then refused. The turn is then taken back once
    the body is whole, as a new request takes one (a 503 if none comes in time); not if it was
    not held, or is over (a streamed response, started), or if the client went away. FastAPI
    reads a body whole anyway."""
    read = False

    async def receive_whole() -> Message:
        nonlocal read
        if read:
            return await receive()
        read = True
        # Read by a task of its own, never cancelled half-way: a receive cut off may lose what it
        # was taking (an ASGI server need not allow it).
        reading = asyncio.ensure_future(_whole_body(receive))
        try:
            await asyncio.sleep(0)  # a body already here is read at once, with no timer
            if not reading.done():
                await asyncio.wait([reading], timeout=_BODY_GRACE)
            if reading.done():
                return reading.result()
            held = turn.release()
            message = await reading
        finally:
            reading.cancel()  # if this request itself is cancelled
        if held and message["type"] == "http.request":
            try:
                await turn.take()
            except PoolExhausted as busy:
                # FastAPI takes anything but an HTTPException from reading a body for a bad one.
                raise HTTPException(503, detail=busy.detail, headers=busy.headers) from busy
        return message

    return receive_whole


async def _whole_body(receive: Receive) -> Message:
    """The body in one message; or the message that ended it early (the client gone)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
