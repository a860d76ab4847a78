"""Who an API request acts for (see authenticator.py); the API's route asks (calls.ApiRoute)."""

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.auth.authenticator import Authenticator
from devreg.auth.principal import Principal


def app_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def authenticate(request: Request, session: AsyncSession, *, writes: bool) -> Principal:
    """The request's principal (401 without a live token, unless the API is open), which must
    be allowed to write when the request `writes` (else 403)."""
    principal = await app_authenticator(request).principal(
        session, request.headers.get("authorization")
    )
    if writes:
        principal.require_write()
    return principal
