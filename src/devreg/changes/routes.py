from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from devreg.calls import ApiRoute, Call, documented
from devreg.changes import service
from devreg.changes.filters import DEFAULT_SORT, SORT_KEYS, ChangeFilter
from devreg.changes.models import Action, ObjectType
from devreg.changes.schemas import ChangePage, ChangeRead
from devreg.problems import problem_responses
from devreg.querystring import Listing, PageQuery, QueryString, page_response
from devreg.schemas import BIGINT_MAX, Id, Instant

router = APIRouter(
    route_class=ApiRoute, tags=["changes"], responses=problem_responses(400, 401, 403, 422)
)


class ChangeListingQuery(PageQuery):
    object_type: tuple[ObjectType, ...] = Field((), description="Any of these.")
    object_id: tuple[Id, ...] = Field((), description="Any of these.")
    user_id: tuple[Id, ...] = Field((), description="Made by any of these.")
    action: tuple[Action, ...] = Field((), description="Any of these.")
    since: Instant | None = Field(None, description="At or after this time.")
    until: Instant | None = Field(None, description="Before this time.")


_CHANGE_LISTING_QUERY = QueryString(ChangeListingQuery)


async def change_listing(request: Request) -> Listing[ChangeFilter]:
    """Newest first (`sort=id` for oldest first)."""
    query = _CHANGE_LISTING_QUERY(request)
    filters = ChangeFilter(
        object_type=query.object_type,
        object_id=query.object_id,
        user_id=query.user_id,
        action=query.action,
        since=query.since,
        until=query.until,
    )
    page = query.page(sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT, item=ChangeRead)
    return Listing(filters=filters, page=page)


ChangeListingDep = Annotated[Listing[ChangeFilter], Depends(change_listing)]


@router.get(
    "/changes",
    response_model=ChangePage,
    openapi_extra=documented(*_CHANGE_LISTING_QUERY.parameters()),
)
async def list_changes(call: Call, listing: ChangeListingDep) -> object:
    """Every create, update and delete of a device or user: all of them for an admin token,
    those its user made for any other."""
    result = await service.list_changes(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(ChangePage, result)


@router.get(
    "/devices/{device_id}/changes",
    response_model=ChangePage,
    responses=problem_responses(404),
    openapi_extra=documented(*_CHANGE_LISTING_QUERY.parameters()),
)
async def list_device_changes(
    device_id: Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The device's id.")],
    call: Call,
    listing: ChangeListingDep,
) -> object:
    """The device's history (also after it was deleted, for an admin token)."""
    result = await service.list_device_changes(
        call.db,
        device_id,
        filters=listing.filters,
        page=listing.page,
        principal=call.principal,
    )
    return page_response(ChangePage, result)
