"""Cross-origin access (CORS): off unless CORS_ORIGINS is set."""

from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from devreg.config import Settings
from devreg.idempotency.header import REPLAYED_HEADER
from devreg.idempotency.models import IDEMPOTENCY_KEY
from devreg.problems import problem_response


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """ProblemCORSMiddleware's options, None when cross-origin calls are off (no CORS_ORIGINS)."""
    if not settings.cors_origins:
        return None
    return {
        "allow_origins": settings.cors_origins,
        "allow_methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        "allow_headers": [
            "Authorization",
            "Content-Type",
            "If-Match",
            "If-None-Match",
            "If-Unmodified-Since",
            IDEMPOTENCY_KEY,
            "X-Request-ID",
        ],
        "expose_headers": ["ETag", "Location", "X-Request-ID", "Retry-After", REPLAYED_HEADER],
        # The origins named may call a devreg on loopback or a private network, as browsers
        # implementing Private Network Access ask first.
        "allow_private_network": True,
    }


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's, with a refused preflight (an origin, method or header not allowed) answered
    as a 400 problem like every other error instead of Starlette's plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != HTTPStatus.BAD_REQUEST:
            return response
        cors_headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        return _RefusedPreflight(bytes(response.body).decode(), cors_headers)


class _RefusedPreflight(Response):
    """A 400 problem whose `instance`, the request's path, is known only once it is sent."""

    def __init__(self, detail: str, cors_headers: dict[str, str]) -> None:
        super().__init__(status_code=HTTPStatus.BAD_REQUEST)
        self.detail = detail
        self.cors_headers = cors_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = problem_response(
            Request(scope),
            status=HTTPStatus.BAD_REQUEST,
            detail=self.detail,
            headers=self.cors_headers,
        )
        await problem(scope, receive, send)
