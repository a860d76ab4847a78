"""Who an API request acts for (see authenticator.py); the API's route asks (calls.ApiRoute)."""

from fastapi import Request

from devreg.auth.authenticator import Authenticator
from devreg.auth.principal import Principal
from devreg.db.session import UnitOfWork
from devreg.errors import MalformedAuthorization

# How the API's routes (calls.ApiRoute) say in OpenAPI that they take a token: so the docs have
# an Authorize button, and generated clients a way to send it.
SECURITY_SCHEMES = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`devreg tokens create`, or `POST /api/v1/tokens`). Not "
        "needed while the API is open: AUTH=auto on a loopback address before the first token "
        "is created, or AUTH=off.",
    }
}
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{"bearerToken": []}]


def app_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def authenticate(request: Request, work: UnitOfWork, *, writes: bool) -> Principal:
    """The request's principal (401 without a live token, unless the API is open), which must
    be allowed to write when the request `writes` (else 403)."""
    authenticator = app_authenticator(request)
    # Read from the raw headers: Starlette's `Headers` would decode every header to find it.
    sent = [value for name, value in request.scope["headers"] if name == b"authorization"]
    if len(sent) > 1 and authenticator.mode != "off":
        raise MalformedAuthorization("Send one Authorization header, not several.")
    authorization = sent[0].decode("latin-1") if sent else None
    client = request.scope.get("client")
    principal = await authenticator.principal(
        work, authorization, request.scope["headers"], client[0] if client else None
    )
    if writes:
        principal.require_write()
    return principal
