"""Bounded request bodies: no client makes a worker buffer more than its route allows.

Starlette's own limit answers a plain-text 413 in place of whatever the app answers, so devreg
keeps its own, answering RFC 9457 problems like every other error."""

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devreg.errors import problem_response


def _too_large(limit: int) -> str:
    return f"The request body is larger than the {limit} bytes this route takes."


class BodyLimitMiddleware:
    """A body above its path's limit is a 413: before anything is read when Content-Length
    says so, else as soon as the bytes received pass the limit. `limits` maps path prefixes to
    limits above `default` (the longest matching prefix wins)."""

    def __init__(self, app: ASGIApp, *, default: int, limits: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.limits = sorted(limits.items(), key=lambda item: len(item[0]), reverse=True)

    def limit_for(self, path: str) -> int:
        return next(
            (limit for prefix, limit in self.limits if path.startswith(prefix)), self.default
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = problem_response(Request(scope), status=413, detail=_too_large(limit))
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=_too_large(limit))
            return message

        await self.app(scope, receive_within_limit, send)
