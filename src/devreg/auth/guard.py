"""FastAPI dependencies: who a request acts for (see authenticator.py)."""

from typing import Annotated

from fastapi import Depends, Request

from devreg.auth.authenticator import Authenticator
from devreg.auth.principal import Principal
from devreg.db.session import SessionDep


async def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


async def authenticate(request: Request, session: SessionDep) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.principal(session, request.headers.get("authorization"))


async def authenticate_writer(request: Request, session: SessionDep) -> Principal:
    # Not a sub-dependency of authenticate: each level of dependencies costs every request.
    principal = await authenticate(request, session)
    principal.require_write()
    return principal


Reader = Annotated[Principal, Depends(authenticate)]
"""Who the request acts for: any live token (or none, while the API is open)."""
Writer = Annotated[Principal, Depends(authenticate_writer)]
"""Who the request acts for, which must be allowed to write (else 403)."""
