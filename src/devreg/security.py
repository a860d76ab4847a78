"""Headers every response carries, and cross-origin access (off unless CORS_ORIGINS is set)."""

import secure
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from devreg.config import Settings
from devreg.idempotency.header import IDEMPOTENCY_KEY, REPLAYED_HEADER

# The API answers JSON; only the bundled /docs and /redoc pages run scripts and styles, inline
# ones among them, all from this origin.
_HEADERS = secure.Secure(
    csp=secure.ContentSecurityPolicy()
    .default_src("'self'")
    .script_src("'self'", "'unsafe-inline'")
    .style_src("'self'", "'unsafe-inline'")
    .img_src("'self'", "data:")
    .object_src("'none'")
    .frame_ancestors("'none'")
    .base_uri("'self'"),
    xcto=secure.XContentTypeOptions(),
    xfo=secure.XFrameOptions().deny(),
    referrer=secure.ReferrerPolicy().no_referrer(),
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in _HEADERS.headers.items()
)


def add_cors_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost (added last), so that the answers the edge gives itself (413, 503) carry the
    CORS headers too, and a browser script can read them."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "If-None-Match",
                IDEMPOTENCY_KEY,
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "X-Request-ID",
                "Retry-After",
                REPLAYED_HEADER,
            ],
        )
