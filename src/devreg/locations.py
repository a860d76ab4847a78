"""The Location of a resource a POST to its collection created."""

from starlette.requests import Request

from devreg.paths import public_path


def created_location(request: Request, member_id: int) -> str:
    """`<the collection's path>/<id>`, a reference relative to the request's URL (RFC 9110,
    section 10.2.2). Not request.url_for: that searches every route and builds an absolute URL
    on each call, about a tenth of a create's CPU."""
    return f"{public_path(request.scope).rstrip('/')}/{member_id}"
