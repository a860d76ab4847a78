"""FastAPI dependencies: who a request acts for (see authenticator.py)."""

from typing import Annotated

from fastapi import Depends, Request

from devreg.auth.authenticator import Authenticator
from devreg.auth.principal import Principal
from devreg.db.session import request_session


def app_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def get_authenticator(request: Request) -> Authenticator:
    return app_authenticator(request)


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


# The session comes from the request itself, not as a sub-dependency: each dependency FastAPI
# solves costs every request.
async def authenticate(request: Request) -> Principal:
    return await app_authenticator(request).principal(
        request_session(request), request.headers.get("authorization")
    )


async def authenticate_writer(request: Request) -> Principal:
    principal = await authenticate(request)
    principal.require_write()
    return principal


Reader = Annotated[Principal, Depends(authenticate)]
"""Who the request acts for: any live token (or none, while the API is open)."""
Writer = Annotated[Principal, Depends(authenticate_writer)]
"""Who the request acts for, which must be allowed to write (else 403)."""
