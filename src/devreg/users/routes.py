from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, Field

from devreg.auth.guard import app_authenticator
from devreg.calls import ApiRoute, Call, documented, header_parameter, unmodified_since
from devreg.conditional import last_modified
from devreg.devices.parameters import (
    DEVICE_FILTERS_DESCRIPTION,
    DEVICE_LISTING_QUERY,
    DeviceListingDep,
)
from devreg.devices.schemas import DevicePage
from devreg.idempotency.header import Idempotency, idempotent_create
from devreg.locations import created_location
from devreg.problems import described_headers, problem_responses
from devreg.querystring import (
    Listing,
    ListingQueryString,
    NamePatterns,
    PageQuery,
    QueryString,
    page_response,
)
from devreg.schemas import Id, InstantParameter, RoundedUpInstantParameter, ShortText
from devreg.users import service
from devreg.users.filters import DEFAULT_SORT, SORT_KEYS, UserFilter
from devreg.users.schemas import EmailText, UserCreate, UserPage, UserRead, UserUpdate

router = APIRouter(
    route_class=ApiRoute, prefix="/users", tags=["users"], responses=problem_responses(401, 403)
)

UserId = Annotated[Id, Path(description="The user's id.")]


_LAST_MODIFIED = {
    "Last-Modified": "When the user last changed (`updated_at`): for If-Unmodified-Since."
}
_DATED: dict[int | str, dict[str, Any]] = {200: {"headers": described_headers(_LAST_MODIFIED)}}


@router.post(
    "",
    response_model=UserRead,
    **idempotent_create(**_LAST_MODIFIED, Location="Where the new user is."),
)
async def create_user(data: UserCreate, call: Call) -> Response:
    """Admins only, once tokens are in use."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    user = await service.register_user(call.db, data=data, principal=call.principal)
    response = Response(
        UserRead.model_validate(user, from_attributes=True).model_dump_json(),
        status_code=status.HTTP_201_CREATED,
        headers={
            "Location": created_location(call, user.id),
            "Last-Modified": last_modified(user.updated_at),
        },
        media_type="application/json",
    )
    await idempotency.remember(response, "Location", "Last-Modified")
    return response


class UserListingQuery(PageQuery):
    name: tuple[ShortText, ...] = ()
    name__ic: NamePatterns = Field((), description="Name contains (any case).")
    name__isw: NamePatterns = Field((), description="Name starts with (any case).")
    email: tuple[EmailText, ...] = Field((), description="Any case.")
    created_after: InstantParameter | None = None
    created_before: RoundedUpInstantParameter | None = None


_USER_LISTING_QUERY = ListingQueryString(
    UserListingQuery, item=UserRead, sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT
)


async def user_listing(request: Request) -> Listing[UserFilter]:
    query = _USER_LISTING_QUERY(request)
    filters = UserFilter(
        name=query.name,
        name_contains=query.name__ic,
        name_starts_with=query.name__isw,
        email=query.email,
        created_after=query.created_after,
        created_before=query.created_before,
    )
    page = _USER_LISTING_QUERY.page(query)
    return Listing(filters=filters, page=page)


UserListingDep = Annotated[Listing[UserFilter], Depends(user_listing)]


@router.get(
    "",
    response_model=UserPage,
    responses=problem_responses(400, 422),
    openapi_extra=documented(*_USER_LISTING_QUERY.parameters()),
)
async def list_users(call: Call, listing: UserListingDep) -> object:
    """Every user for an admin token; only its own user for any other."""
    result = await service.list_users(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(UserPage, result)


_IF_UNMODIFIED_SINCE = documented(
    header_parameter(
        "If-Unmodified-Since",
        "Only if the user has not changed since this HTTP-date (`updated_at`, to the second; "
        "else 412).",
    )
)


@router.get(
    "/{user_id}",
    response_model=UserRead,
    responses={**_DATED, **problem_responses(404, 422)},
    openapi_extra=_IF_UNMODIFIED_SINCE,
)
async def get_user(user_id: UserId, call: Call, response: Response) -> object:
    user = await service.get_user(
        call.db, user_id, principal=call.principal, unchanged_since=unmodified_since(call)
    )
    response.headers["Last-Modified"] = last_modified(user.updated_at)
    return user


@router.patch(
    "/{user_id}",
    response_model=UserRead,
    responses={**_DATED, **problem_responses(404, 409, 422)},
    openapi_extra=_IF_UNMODIFIED_SINCE,
)
async def update_user(user_id: UserId, data: UserUpdate, call: Call, response: Response) -> object:
    user = await service.update_user(
        call.db,
        user_id,
        data=data,
        principal=call.principal,
        unchanged_since=unmodified_since(call),
    )
    response.headers["Last-Modified"] = last_modified(user.updated_at)
    return user


class UserDeletionQuery(BaseModel):
    cascade: Literal["devices"] | None = Field(
        None, description="`devices` deletes the user's devices along with the user."
    )


_USER_DELETION_QUERY = QueryString(UserDeletionQuery)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(400, 404, 409, 422, 428),
    openapi_extra=documented(
        *_USER_DELETION_QUERY.parameters(), *_IF_UNMODIFIED_SINCE["parameters"]
    ),
)
async def delete_user(
    user_id: UserId,
    call: Call,
    query: Annotated[UserDeletionQuery, Depends(_USER_DELETION_QUERY)],
) -> None:
    """Admins only, once tokens are in use."""
    await service.delete_user(
        call.db,
        user_id,
        cascade_devices=query.cascade == "devices",
        require_if_match=call.settings.require_if_match,
        principal=call.principal,
        authenticator=app_authenticator(call),
        unchanged_since=unmodified_since(call),
    )


@router.get(
    "/{user_id}/devices",
    response_model=DevicePage,
    responses=problem_responses(400, 404, 422),
    description="The user's devices, with every filter and option of `GET /devices`. "
    + DEVICE_FILTERS_DESCRIPTION,
    openapi_extra=documented(*DEVICE_LISTING_QUERY.parameters()),
)
async def list_user_devices(user_id: UserId, call: Call, listing: DeviceListingDep) -> object:
    result = await service.list_user_devices(
        call.db, user_id, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(DevicePage, result)
