"""A request's path under the prefix it is served at (the ASGI scope's `root_path`).

Servers now put the root path at the start of `scope["path"]` too (uvicorn does, as the ASGI
spec says); others, and httpx's ASGITransport, leave it out. Code that matches a path against
the app's own paths, or writes one for the client, reads it through here, as Starlette's routing
does, so either kind of server is served alike."""

from starlette.types import Scope


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
