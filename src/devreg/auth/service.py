"""Token use cases. Services never commit: the caller's session scope does."""

import secrets
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from devreg.auth.authenticator import Authenticator, token_digest
from devreg.auth.filters import SORT_KEYS, TokenFilter
from devreg.auth.models import PREFIX_LENGTH
from devreg.auth.principal import Principal
from devreg.auth.repository import TokenRepository
from devreg.auth.schemas import TokenCreate, TokenCreated, TokenRead
from devreg.db.rendering import Rendered
from devreg.errors import AdminRequired, InvalidInput, TokenNotFound
from devreg.pagination import PageRequest, PageResult, paginate_listing

# Recognisable in logs and by secret scanners.
TOKEN_MARKER = "dvr_"  # noqa: S105 - a marker, not a secret


def _new_token() -> str:
    return TOKEN_MARKER + secrets.token_urlsafe(32)


async def create_token(
    session: AsyncSession,
    principal: Principal,
    *,
    data: TokenCreate,
    authenticator: Authenticator | None = None,
) -> TokenCreated:
    """A new token for `data.user_id` (by default the caller's user). A non-admin may only
    create plain tokens for its own user."""
    user_id = data.user_id if data.user_id is not None else principal.user_id
    if user_id is None:
        raise InvalidInput("user_id is required: whose token is it?", field="user_id")
    if not principal.admin and (data.admin or user_id != principal.user_id):
        raise AdminRequired("Only an admin token may create admin tokens or other users' tokens.")
    token = _new_token()
    expires_at = datetime.now(UTC) + data.expires_in if data.expires_in else None
    stored = await TokenRepository(session).add(
        {
            "user_id": user_id,
            "prefix": token[:PREFIX_LENGTH],
            "token_hash": token_digest(token),
            "scope": data.scope,
            "admin": data.admin,
            "expires_at": expires_at,
        }
    )
    if authenticator is not None:
        authenticator.token_created()
    return TokenCreated.model_validate(
        {**TokenRead.model_validate(stored).model_dump(), "token": token}
    )


async def list_tokens(
    session: AsyncSession, principal: Principal, *, filters: TokenFilter, page: PageRequest
) -> PageResult[Rendered]:
    """The caller's own tokens; an admin's: everyone's, or `user_id`'s."""
    if principal.owner is not None:
        filters = replace(filters, visible_to=principal.owner)
    return await paginate_listing(
        "tokens", TokenRepository(session), filters, page, value_type=SORT_KEYS[page.sort.key]
    )


async def revoke_token(
    session: AsyncSession,
    principal: Principal,
    token_id: int,
    *,
    authenticator: Authenticator | None = None,
) -> None:
    digest = await TokenRepository(session).revoke(token_id, owner=principal.owner)
    if digest is None:
        raise TokenNotFound
    if authenticator is not None:
        authenticator.forget(digest)
