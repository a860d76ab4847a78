"""Bounded request bodies: no client makes a worker buffer more than its route allows.

Starlette's own limit answers a plain-text 413 in place of whatever the app answers, so devreg
keeps its own, answering RFC 9457 problems like every other error."""

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import Message, Receive


def too_large(limit: int) -> str:
    return f"The request body is larger than the {limit} bytes this route takes."


class BodyLimits:
    """A limit per path: `limits` maps paths (whole: `/devices/bulk`, not `/devices/bulkx`) to
    limits other than `default`."""

    def __init__(self, *, default: int, limits: Mapping[str, int]) -> None:
        self.default = default
        self.limits = dict(limits)

    def limit_for(self, path: str) -> int:
        return self.limits.get(path, self.default)


def declared_too_large(content_length: bytes | None, limit: int) -> bool:
    """Whether Content-Length already says the body is over the limit."""
    return content_length is not None and content_length.isdigit() and int(content_length) > limit


def receive_within(receive: Receive, limit: int) -> Receive:
    """`receive`, raising a 413 as soon as the bytes received pass `limit`."""
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, detail=too_large(limit))
        return message

    return receive_within_limit
