"""Headers every response carries (the edge adds them; the protocol's own 431 too)."""

import secure

# The API answers JSON; only the bundled /docs and /redoc pages run scripts and styles, inline
# ones among them, all from this origin, and Redoc's search a worker made from a blob: URL.
_HEADERS = secure.Secure(
    csp=secure.ContentSecurityPolicy()
    .default_src("'self'")
    .script_src("'self'", "'unsafe-inline'")
    .worker_src("'self'", "blob:")
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

# Unless a response says otherwise (a new token's no-store): a cache may keep it but must ask
# again before using it, its ETag answered with a 304 when nothing changed. Said nothing, a
# shared cache in front of an open API (AUTH=off) could serve a device minutes old.
DEFAULT_CACHE_CONTROL = (b"cache-control", b"no-cache")
