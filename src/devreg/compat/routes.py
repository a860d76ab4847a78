"""The tutorials' exact requests and responses, kept apart from the canonical API.

No logic lives here: every route calls the same services as the canonical routes.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Query, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from devreg.calls import (
    ApiRoute,
    Call,
    documented,
    read_preconditions,
    unmodified_since,
    write_precondition,
)
from devreg.compat.schemas import Deleted, TutorialDeviceIn, TutorialDeviceUpdate, TutorialItem
from devreg.devices import service as devices_service
from devreg.devices.filters import DeviceFilter
from devreg.devices.parameters import (
    GUARDED_WRITE_HEADERS,
    IF_MATCH_HEADER,
    IF_UNMODIFIED_SINCE_HEADER,
    DeviceId,
)
from devreg.devices.schemas import DeviceCreate, DeviceUpdate
from devreg.health.routes import TUTORIAL_READINESS_PATH
from devreg.health.routes import router as health_router
from devreg.idempotency.header import Idempotency
from devreg.pagination import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PageRequest
from devreg.paths import sent_path
from devreg.querystring import items_response
from devreg.schemas import ShortText
from devreg.users import service as users_service
from devreg.users.filters import UserFilter
from devreg.users.routes import UserId
from devreg.users.schemas import UserCreate


class TutorialRoute(ApiRoute):
    """A tutorial's route reads its query string as FastAPI does, as the tutorial's clients
    met it: a parameter it does not know is ignored."""

    refuses_unknown_query_parameters = False


router = APIRouter(route_class=TutorialRoute, include_in_schema=False)

# The tutorials listed every row; here a list is the first page, as everywhere in devreg.
Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)]
_TUTORIAL_FIELDS = frozenset(TutorialItem.model_fields)


async def _created(call: Call, create: Callable[[], Awaitable[object]]) -> Response:
    """What `create` made, as the tutorial answers it: once for an Idempotency-Key, and that
    answer again for the key repeated (the key was ignored, and a retry created twice)."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    item = TutorialItem.model_validate(await create(), from_attributes=True)
    response = Response(item.model_dump_json(), media_type="application/json")
    await idempotency.remember(response)
    return response


@router.post("/api/v1/device/", response_model=TutorialItem)
async def tutorial_create_device(data: TutorialDeviceIn, call: Call) -> Response:
    return await _created(
        call,
        lambda: devices_service.register_device(
            call.db, data=DeviceCreate(name=data.name), principal=call.principal
        ),
    )


@router.get("/api/v1/device/", response_model=list[TutorialItem])
async def tutorial_list_devices(call: Call, limit: Limit = PAGE_LIMIT_DEFAULT) -> object:
    page = await devices_service.list_devices(
        call.db,
        filters=DeviceFilter(),
        page=PageRequest(limit=limit, fields=_TUTORIAL_FIELDS),
        principal=call.principal,
    )
    return items_response(page.items)


# If-Match as on the device's own GET, since its writes take it: a GET naming the version a PUT
# takes was a 412 for a resource "without an ETag".
@router.get(
    "/api/v1/device/{device_id}",
    response_model=TutorialItem,
    openapi_extra=documented(IF_MATCH_HEADER, IF_UNMODIFIED_SINCE_HEADER),
)
async def tutorial_get_device(device_id: DeviceId, call: Call) -> object:
    return await devices_service.get_device(
        call.db, device_id, principal=call.principal, conditions=read_preconditions(call)
    )


@router.put(
    "/api/v1/device/{device_id}", response_model=TutorialItem, openapi_extra=GUARDED_WRITE_HEADERS
)
async def tutorial_update_device(
    device_id: DeviceId, data: TutorialDeviceUpdate, call: Call
) -> object:
    changes = DeviceUpdate.model_validate(data.changes())
    return await devices_service.update_device(
        call.db,
        device_id,
        data=changes,
        condition=write_precondition(call),
        principal=call.principal,
    )


@router.delete(
    "/api/v1/device/{device_id}", response_model=Deleted, openapi_extra=GUARDED_WRITE_HEADERS
)
async def tutorial_delete_device(device_id: DeviceId, call: Call) -> Deleted:
    await devices_service.delete_device(
        call.db, device_id, condition=write_precondition(call), principal=call.principal
    )
    return Deleted()


@router.post("/users/", response_model=TutorialItem)
async def tutorial_create_user(name: Annotated[ShortText, Query()], call: Call) -> Response:
    return await _created(
        call,
        lambda: users_service.register_user(
            call.db, data=UserCreate(name=name), principal=call.principal
        ),
    )


@router.get("/users/", response_model=list[TutorialItem])
async def tutorial_list_users(call: Call, limit: Limit = PAGE_LIMIT_DEFAULT) -> object:
    page = await users_service.list_users(
        call.db,
        filters=UserFilter(),
        page=PageRequest(limit=limit, fields=_TUTORIAL_FIELDS),
        principal=call.principal,
    )
    return items_response(page.items)


@router.get("/users/{user_id}", response_model=TutorialItem)
async def tutorial_get_user(user_id: UserId, call: Call) -> object:
    return await users_service.get_user(
        call.db, user_id, principal=call.principal, unchanged_since=unmodified_since(call)
    )


def with_tutorial_slashes(not_found: ASGIApp) -> ASGIApp:
    """`not_found`, but for a tutorial's path with a slash too few or too many (`/users`,
    `/api/v1/device/1/`): a 307 to the path the tutorial has, as the tutorials' apps (FastAPI's
    defaults) answered it. devreg's own paths are not redirected (app.py), and the Location is
    the path alone, not built from the request's Host."""
    # The tutorial's health check is one of its paths too (served by the health router).
    tutorial_routes = [
        *router.routes,
        *(
            route
            for route in health_router.routes
            if isinstance(route, APIRoute) and route.path == TUTORIAL_READINESS_PATH
        ),
    ]

    async def redirect_or_not_found(scope: Scope, receive: Receive, send: Send) -> None:
        # As sent, escapes kept: built from the decoded path, `/device/1%3F/` went to
        # `/device/1?`, device 1. And matched as it will be decoded: toggled in the decoded path,
        # a slash sent as %2F was taken away, where the target has it and gains another.
        target = _slash_toggled(sent_path(scope))
        elsewhere = {**scope, "path": unquote(target)}
        if scope["type"] == "http" and any(
            route.matches(elsewhere)[0] is not Match.NONE for route in tutorial_routes
        ):
            query = scope["query_string"].decode("latin-1")
            location = f"{target}?{query}" if query else target
            await RedirectResponse(location, status_code=307)(scope, receive, send)
            return
        await not_found(scope, receive, send)

    return redirect_or_not_found


def _slash_toggled(path: str) -> str:
    return path.removesuffix("/") if path.endswith("/") else path + "/"
