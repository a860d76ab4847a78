from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from devreg.calls import ApiRoute, Call, documented
from devreg.changes import service
from devreg.changes.filters import DEFAULT_SORT, SORT_KEYS, ChangeFilter
from devreg.changes.models import Action, ObjectType
from devreg.changes.schemas import ChangePage, ChangeRead
from devreg.devices.parameters import DeviceId
from devreg.pagination import PageRequest
from devreg.problems import problem_responses
from devreg.querystring import Listing, ListingQueryString, PageQuery, page_response
from devreg.schemas import Id, RoundedUpInstantParameter

router = APIRouter(
    route_class=ApiRoute, tags=["changes"], responses=problem_responses(400, 401, 403, 422)
)


class ObjectChangeListingQuery(PageQuery):
    """The filters of one object's history."""

    user_id: tuple[Id, ...] = Field((), description="Made by any of these.")
    action: tuple[Action, ...] = Field((), description="Any of these.")
    since: RoundedUpInstantParameter | None = Field(None, description="At or after this time.")
    until: RoundedUpInstantParameter | None = Field(None, description="Before this time.")


class ChangeListingQuery(ObjectChangeListingQuery):
    object_type: tuple[ObjectType, ...] = Field((), description="Any of these.")
    object_id: tuple[Id, ...] = Field((), description="Any of these.")


_CHANGE_LISTING_QUERY = ListingQueryString(
    ChangeListingQuery, item=ChangeRead, sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT
)
_OBJECT_CHANGE_LISTING_QUERY = ListingQueryString(
    ObjectChangeListingQuery, item=ChangeRead, sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT
)


def _change_listing(
    query: ObjectChangeListingQuery,
    page: PageRequest,
    *,
    object_type: tuple[ObjectType, ...] = (),
    object_id: tuple[int, ...] = (),
) -> Listing[ChangeFilter]:
    """Newest first (`sort=id` for oldest first)."""
    filters = ChangeFilter(
        object_type=object_type,
        object_id=object_id,
        user_id=query.user_id,
        action=query.action,
        since=query.since,
        until=query.until,
    )
    return Listing(filters=filters, page=page)


async def change_listing(request: Request) -> Listing[ChangeFilter]:
    query = _CHANGE_LISTING_QUERY(request)
    page = _CHANGE_LISTING_QUERY.page(query)
    return _change_listing(query, page, object_type=query.object_type, object_id=query.object_id)


async def object_change_listing(request: Request) -> Listing[ChangeFilter]:
    """One object's history: which objects is the path's to say."""
    query = _OBJECT_CHANGE_LISTING_QUERY(request)
    return _change_listing(query, _OBJECT_CHANGE_LISTING_QUERY.page(query))


ChangeListingDep = Annotated[Listing[ChangeFilter], Depends(change_listing)]
ObjectChangeListingDep = Annotated[Listing[ChangeFilter], Depends(object_change_listing)]


@router.get(
    "/changes",
    response_model=ChangePage,
    openapi_extra=documented(*_CHANGE_LISTING_QUERY.parameters()),
)
async def list_changes(call: Call, listing: ChangeListingDep) -> object:
    """Every create, update and delete of a device or user: all of them for an admin token; for
    any other, the history of its user's devices from the user's time with each, and of the
    user's own record."""
    result = await service.list_changes(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(ChangePage, result)


@router.get(
    "/devices/{device_id}/changes",
    response_model=ChangePage,
    responses=problem_responses(404),
    openapi_extra=documented(*_OBJECT_CHANGE_LISTING_QUERY.parameters()),
)
async def list_device_changes(
    device_id: DeviceId,
    call: Call,
    listing: ObjectChangeListingDep,
) -> object:
    """The device's history, also after it was deleted or given away: an admin token's all of
    it, any other's its user's time with the device."""
    result = await service.list_device_changes(
        call.db,
        device_id,
        filters=listing.filters,
        page=listing.page,
        principal=call.principal,
    )
    return page_response(ChangePage, result)
