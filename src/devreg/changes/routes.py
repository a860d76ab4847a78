from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from devreg.calls import ApiRoute, Call
from devreg.changes import service
from devreg.changes.filters import DEFAULT_SORT, SORT_KEYS, ChangeFilter
from devreg.changes.models import Action, ObjectType
from devreg.changes.schemas import ChangePage, ChangeRead
from devreg.errors import problem_responses
from devreg.querystring import (
    LISTING_PARAMETERS,
    Listing,
    PageOptionsDep,
    page_response,
    reject_unknown,
)
from devreg.schemas import BIGINT_MAX, Id, Instant

router = APIRouter(
    route_class=ApiRoute, tags=["changes"], responses=problem_responses(400, 401, 403, 422)
)

_FILTER_PARAMETERS = frozenset({"object_type", "object_id", "user_id", "action", "since", "until"})


async def change_listing(
    request: Request,
    options: PageOptionsDep,
    object_type: Annotated[list[ObjectType] | None, Query(description="Any of these.")] = None,
    object_id: Annotated[list[Id] | None, Query(description="Any of these.")] = None,
    user_id: Annotated[list[Id] | None, Query(description="Made by any of these.")] = None,
    action: Annotated[list[Action] | None, Query(description="Any of these.")] = None,
    since: Annotated[Instant | None, Query(description="At or after this time.")] = None,
    until: Annotated[Instant | None, Query(description="Before this time.")] = None,
) -> Listing[ChangeFilter]:
    """Newest first (`sort=id` for oldest first)."""
    reject_unknown(request, _FILTER_PARAMETERS | LISTING_PARAMETERS)
    filters = ChangeFilter(
        object_type=tuple(object_type or ()),
        object_id=tuple(object_id or ()),
        user_id=tuple(user_id or ()),
        action=tuple(action or ()),
        since=since,
        until=until,
    )
    return options.listing(filters, sort_keys=SORT_KEYS, default_sort=DEFAULT_SORT, item=ChangeRead)


ChangeListingDep = Annotated[Listing[ChangeFilter], Depends(change_listing)]


@router.get("/changes", response_model=ChangePage)
async def list_changes(call: Call, listing: ChangeListingDep) -> object:
    """Every create, update and delete of a device or user: all of them for an admin token,
    those its user made for any other."""
    result = await service.list_changes(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(ChangePage, result)


@router.get(
    "/devices/{device_id}/changes", response_model=ChangePage, responses=problem_responses(404)
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
