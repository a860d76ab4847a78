"""Token use cases. Services never commit: the caller's session scope does."""

import secrets
from datetime import UTC, datetime, timedelta

from devreg.auth.authenticator import Authenticator, token_digest
from devreg.auth.filters import TokenFilter
from devreg.auth.models import PREFIX_LENGTH
from devreg.auth.principal import Principal
from devreg.auth.repository import TokenRepository
from devreg.auth.schemas import TokenCreate, TokenCreated, TokenRead
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.errors import AdminRequired, InvalidInput, InvalidToken, TokenNotFound, UnknownUser
from devreg.pagination import PageRequest, PageResult, paginate_listing

# Recognisable in logs and by secret scanners.
TOKEN_MARKER = "dvr_"  # noqa: S105 - a marker, not a secret


def _new_token() -> str:
    return TOKEN_MARKER + secrets.token_urlsafe(32)


async def create_token(
    work: UnitOfWork,
    principal: Principal,
    *,
    data: TokenCreate,
    authenticator: Authenticator | None = None,
) -> TokenCreated:
    """A new token for `data.user_id` (by default the caller's user). A non-admin may only
    create plain tokens for its own user. A token that expires creates only tokens that expire
    by then: asked for none, theirs is its own expiry."""
    user_id = data.user_id if data.user_id is not None else principal.user_id
    if user_id is None:
        raise InvalidInput("user_id is required: whose token is it?", field="user_id")
    if not principal.admin and (data.admin or user_id != principal.user_id):
        raise AdminRequired("Only an admin token may create admin tokens or other users' tokens.")
    token = _new_token()
    _refuse_outliving(principal, data.expires_in)
    if authenticator is not None:
        await authenticator.confirm_open(work, principal)
    tokens = TokenRepository(work)
    try:
        stored = await tokens.add(
            {
                "user_id": user_id,
                "prefix": token[:PREFIX_LENGTH],
                "token_hash": token_digest(token),
                "scope": data.scope,
                "admin": data.admin,
                "expires_at": principal.expires_at,
            },
            expires_in=data.expires_in,
        )
    except UnknownUser:
        # Trusted from the cache, a token whose own user was deleted (its tokens with it) in
        # the last AUTH_CACHE_TTL: it is no token any more, as one revoked.
        if principal.token_id is not None and user_id == principal.user_id:
            raise InvalidToken from None
        raise
    # Trusted from the cache, a token revoked in the last AUTH_CACHE_TTL could still make
    # others: they would outlive its revocation. Held after the insert, which holds the user
    # first, as a deletion of the user does: taken the other way round, the two deadlocked.
    if principal.token_id is not None and not await tokens.hold_if_live(principal.token_id):
        raise InvalidToken
    if authenticator is not None:
        work.once_committed(authenticator.token_created)
    return TokenCreated.model_validate(
        {**TokenRead.model_validate(stored).model_dump(), "token": token}
    )


def _refuse_outliving(principal: Principal, expires_in: timedelta | None) -> None:
    """A new token expires after `expires_in`, but never after the token creating it: asked to,
    422 (the repository holds it to that limit by the database's clock too)."""
    limit = principal.expires_at
    if expires_in is not None and limit is not None and datetime.now(UTC) + expires_in > limit:
        raise InvalidInput(
            "A token may not outlive the token that creates it, which expires at "
            f"{limit.isoformat().replace('+00:00', 'Z')}.",
            field="expires_in",
        )


async def list_tokens(
    work: UnitOfWork, principal: Principal, *, filters: TokenFilter, page: PageRequest
) -> PageResult[Rendered]:
    """The caller's own tokens; an admin's: everyone's, or `user_id`'s."""
    return await paginate_listing(
        "tokens", TokenRepository(work), principal.restrict(filters), page
    )


async def get_token(work: UnitOfWork, principal: Principal, token_id: int) -> TokenRead:
    """A token of the caller's user (an admin's: anyone's), as it is listed: never its secret."""
    token = await TokenRepository(work).get(token_id, owner=principal.owner)
    if token is None:
        raise TokenNotFound
    return TokenRead.model_validate(token)


async def revoke_token(
    work: UnitOfWork,
    principal: Principal,
    token_id: int,
    *,
    authenticator: Authenticator | None = None,
) -> None:
    """Revoke a token of the caller's user (an admin's: anyone's). Only an admin token may
    revoke an admin token: a leaked plain token must not lock its user's admin out."""
    tokens = TokenRepository(work)
    digest = await tokens.revoke(token_id, owner=principal.owner, plain_only=not principal.admin)
    if digest is None:
        owner = principal.owner
        if owner is not None and await tokens.is_admin_token_of(token_id, owner):
            raise AdminRequired("Only an admin token may revoke an admin token.")
        raise TokenNotFound
    if authenticator is not None:
        authenticator.forget(digest)
