"""A request's path under the prefix it is served at (the ASGI scope's `root_path`).

Servers now put the root path at the start of `scope["path"]` too (uvicorn does, as the ASGI
spec says); others, and httpx's ASGITransport, leave it out. Code that matches a path against
the app's own paths, or writes one for the client, reads it through here, as Starlette's routing
does, so either kind of server is served alike."""

from urllib.parse import quote

from starlette.types import Scope

# What a path may hold as it is (RFC 3986's pchar and `/`), `%` to keep the escapes it has.
_PATH_CHARACTERS = "/%!$&'()*+,;=:@-._~"


def route_path(scope: Scope) -> str:
    """The path the app's routes are matched against: `scope["path"]` without the root path
    at its start, as Starlette's routing reads it (with `starlette._utils.get_route_path`,
    which is private); a path that merely begins with the same letters (`/devregx`) is kept."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path) :]
    return rest if rest == "" or rest.startswith("/") else path


def public_path(scope: Scope) -> str:
    """The path as the client wrote it, behind a proxy that strips the prefix: the root path,
    once, then the route's path."""
    root_path: str = scope.get("root_path", "")
    return root_path + route_path(scope)


def sent_path(scope: Scope) -> str:
    """The path as the client sent it (`raw_path`), under the root path once: a URI reference
    for the client, to name the request by. The decoded path names another resource
    (`/devices/1%3F` decoded is `/devices/1?`, device 1; `1%2F2` is `1/2`) or none (a space);
    bytes the server let through that a URI may not hold (`"`, `<`) are escaped."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return public_path(scope)
    return public_path({**scope, "path": quote(raw, safe=_PATH_CHARACTERS)})
