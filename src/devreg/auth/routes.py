from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response, status
from pydantic import Field

from devreg.auth import service
from devreg.auth.filters import DEFAULT_SORT, SORT_KEYS, TokenFilter
from devreg.auth.guard import app_authenticator
from devreg.auth.schemas import TokenCreate, TokenCreated, TokenPage, TokenRead
from devreg.calls import ApiRoute, Call, documented
from devreg.errors import IdempotencyKeyNotTaken
from devreg.idempotency.models import IDEMPOTENCY_KEY
from devreg.locations import created_location
from devreg.problems import described_headers, problem_responses
from devreg.querystring import Listing, ListingQueryString, PageQuery, page_response
from devreg.schemas import Id

router = APIRouter(
    route_class=ApiRoute,
    prefix="/tokens",
    tags=["tokens"],
    responses=problem_responses(401, 403),
)

TokenId = Annotated[Id, Path(description="The token's id.")]
# Every field has its default: a request with no body asks for them all, as `{}` does.
_DEFAULT_TOKEN = TokenCreate()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses={
        201: {
            "headers": described_headers(
                {
                    "Cache-Control": "`no-store`: it holds the token.",
                    "Location": "Where the new token is (its secret is not).",
                }
            )
        },
        **problem_responses(422),
    },
)
async def create_token(
    call: Call, response: Response, data: Annotated[TokenCreate, Body()] = _DEFAULT_TOKEN
) -> TokenCreated:
    """A new token, shown in full this once; only its hash is kept. With no body, a
    `write` token of the caller's own user that never expires (or expires with the caller's)."""
    if call.header_value(IDEMPOTENCY_KEY) is not None:
        raise IdempotencyKeyNotTaken(
            "A new token is shown once and kept only as a hash, so its answer cannot be given "
            "again: a retry makes another token. Send no Idempotency-Key here."
        )
    created = await service.create_token(
        call.db, call.principal, data=data, authenticator=app_authenticator(call)
    )
    response.headers["Cache-Control"] = "no-store"  # it carries the secret
    response.headers["Location"] = created_location(call, created.id)
    return created


class TokenListingQuery(PageQuery):
    user_id: tuple[Id, ...] = Field((), description="Any of these users' (admins).")


_TOKEN_LISTING_QUERY = ListingQueryString(
    TokenListingQuery, item=TokenRead, sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT
)


async def token_listing(request: Request) -> Listing[TokenFilter]:
    query = _TOKEN_LISTING_QUERY(request)
    return Listing(
        filters=TokenFilter(user_id=query.user_id), page=_TOKEN_LISTING_QUERY.page(query)
    )


TokenListingDep = Annotated[Listing[TokenFilter], Depends(token_listing)]


@router.get(
    "",
    response_model=TokenPage,
    responses=problem_responses(400, 422),
    openapi_extra=documented(*_TOKEN_LISTING_QUERY.parameters()),
)
async def list_tokens(call: Call, listing: TokenListingDep) -> object:
    """The caller's tokens (an admin's: everyone's), revoked ones included, oldest first."""
    result = await service.list_tokens(
        call.db, call.principal, filters=listing.filters, page=listing.page
    )
    return page_response(TokenPage, result)


@router.get("/{token_id}", response_model=TokenRead, responses=problem_responses(404, 422))
async def get_token(token_id: TokenId, call: Call) -> object:
    """A token of the caller's user (an admin's: anyone's), as listed."""
    return await service.get_token(call.db, call.principal, token_id)


@router.delete(
    "/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404, 422)
)
async def revoke_token(token_id: TokenId, call: Call) -> None:
    """Revoke a token: it stops working at once (on other workers within AUTH_CACHE_TTL)."""
    await service.revoke_token(
        call.db, call.principal, token_id, authenticator=app_authenticator(call)
    )
