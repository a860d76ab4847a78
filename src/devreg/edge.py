"""What every HTTP exchange passes through, once, in one ASGI middleware.

One layer instead of five (request id, security headers, request log, body limit, admission):
each layer wraps `send` and `receive` again and adds its own awaits to every request; as
separate middlewares they cost about a fifth of a simple GET's CPU."""

import asyncio
import os
import re
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from asgi_correlation_id import correlation_id
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devreg.admission import Admission, Turn
from devreg.body_limit import (
    BodyLimits,
    declared_too_large,
    declares_body,
    too_large,
    whole_body_without,
)
from devreg.cors import ProblemCORSMiddleware
from devreg.errors import PoolExhausted, ServerStopping, UndecodableQueryString
from devreg.headers import DEFAULT_CACHE_CONTROL, SECURITY_HEADERS
from devreg.logs import log_request
from devreg.paths import route_path
from devreg.problems import (
    error_response,
    problem_response,
    response_cut_short,
    unhandled_error,
)

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_REPLACED_HEADERS = frozenset(name for name, _ in SECURITY_HEADERS) | {REQUEST_ID_HEADER}


HEAD_REQUEST = "devreg.head"
"""In the scope of a HEAD request, which the app serves as a GET: a body it would stream (an
export) need not be made."""


def is_head_request(scope: Scope) -> bool:
    return bool(scope.get(HEAD_REQUEST, False))


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a request header (ASGI gives names in lower case)."""
    return next((value for key, value in headers if key == name), None)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The X-Request-ID the client sent, when it is a sane one; else a new one: 128 random bits as
    32 hex digits, like `uuid4().hex` (without its version digits) at a fifth of its cost."""
    sent = _header(headers, REQUEST_ID_HEADER)
    if sent is not None and _VALID_REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    return os.urandom(16).hex()


def _decodable(query_string: bytes) -> bool:
    """Whether the query string is UTF-8 once percent-decoded."""
    if query_string.isascii() and b"%" not in query_string:
        return True
    try:
        unquote_to_bytes(query_string).decode()
    except UnicodeDecodeError:
        return False
    return True


def _refusal(scope: Scope, body_limit: int) -> Response | None:
    """The answer to a request refused before the app sees it: a query string that is not UTF-8
    (400), a declared body over the limit (413)."""
    if not _decodable(scope["query_string"]):
        return error_response(Request(scope), UndecodableQueryString())
    if declared_too_large(_header(scope["headers"], b"content-length"), body_limit):
        return problem_response(Request(scope), status=413, detail=too_large(body_limit))
    return None


class EdgeMiddleware:
    """Per request: its request id (in the log context and on the response), a query string
    that is not UTF-8 (400), its path's body limit (413) and deadline (408), its turn
    (admission.py; health checks need none), the security headers on every response, one log
    line (method, path, status, duration), and a crash no handler caught answered as a 500
    problem, never a traceback."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limits: BodyLimits,
        always_admitted: frozenset[str],
        cors: dict[str, Any] | None,
    ) -> None:
        self.app = app
        self.body_limits = body_limits
        self.always_admitted = always_admitted
        self.cors = cors

    def _admission(self, scope: Scope, path: str) -> Admission | None:
        """What admits the request to `path` (its route path): the app's (from its lifespan),
        unless it is a health check or an OPTIONS request (a browser's preflight, answered
        without the database)."""
        if path in self.always_admitted or scope["method"] == "OPTIONS":
            return None
        admission: Admission | None = scope.get("state", {}).get("admission")
        return admission

    def _own(self, answer: Response) -> ASGIApp:
        """An answer the edge gives itself, with the CORS headers a browser needs to read it
        (the app's answers have them from the CORS middleware inside the edge)."""
        return answer if self.cors is None else ProblemCORSMiddleware(answer, **self.cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        method = scope["method"]
        if method == "HEAD":  # a GET without its body (RFC 9110, 9.3.2), wherever GET is served
            scope = {**scope, "method": "GET", HEAD_REQUEST: True}
        headers = scope["headers"]
        request_id = _request_id(headers)
        correlation_id.set(request_id)
        added = (*SECURITY_HEADERS, (REQUEST_ID_HEADER, request_id.encode("ascii")))
        status = 500
        response_started = response_ended = head_answered = False
        turn: Turn | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started, response_ended, head_answered
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                kept = [h for h in message.get("headers", ()) if h[0] not in _REPLACED_HEADERS]
                if _header(kept, b"cache-control") is None:
                    kept.append(DEFAULT_CACHE_CONTROL)
                message["headers"] = [*kept, *added]
                if turn is not None:
                    turn.end()
            elif method == "HEAD":
                if head_answered:
                    return
                head_answered = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_ended = True
            await send(message)

        try:
            path = route_path(scope)
            limit = self.body_limits.limit_for(path)
            receive_body = self.body_limits.receive_within(receive, limit)
            admission = self._admission(scope, path)
            refusal = _refusal(scope, limit)
            if refusal is not None:
                await self._own(refusal)(scope, receive, send_with_headers)
            elif admission is None:
                await self.app(scope, receive_body, send_with_headers)
            else:
                async with admission.turn() as turn:
                    if declares_body(headers):
                        receive_body = whole_body_without(turn, receive_body)
                    await self.app(scope, receive_body, send_with_headers)
        except asyncio.CancelledError:
            # The server stopping cancels what it still serves once SHUTDOWN_TIMEOUT passed: a
            # 503 to send again (not uvicorn's bare 500 and a crash logged); the request then
            # ends, as asked.
            stopping = ServerStopping()
            if response_started:
                response_cut_short(Request(scope), stopping)
            else:
                response = error_response(Request(scope), stopping)
                await self._own(response)(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:  # a streamed response (an export) broke off
                response_cut_short(Request(scope), exc)
            else:
                # PoolExhausted: no turn came in time (an expected 503); anything else a crash.
                if isinstance(exc, PoolExhausted):
                    response = error_response(Request(scope), exc)
                else:
                    response = await unhandled_error(Request(scope), exc)
                await self._own(response)(scope, receive, send_with_headers)
        finally:
            client = scope.get("client")
            line = {
                "method": method,
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started_at) * 1000, 2),
                # Behind a proxy FORWARDED_ALLOW_IPS names, its client (X-Forwarded-For).
                "client": client[0] if client else None,
            }
            if response_started and not response_ended:  # broken off, or the client went away
                line["incomplete"] = True
            log_request(line)
