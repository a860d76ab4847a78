from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Response, status
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from devreg.calls import (
    ApiRoute,
    Call,
    StreamingWorkDep,
    documented,
    read_preconditions,
    write_precondition,
)
from devreg.conditional import etag, last_modified, not_modified
from devreg.devices import bulk, export, service
from devreg.devices.export import EXPORT_MEDIA_TYPES
from devreg.devices.parameters import (
    DEVICE_EXPORT_QUERY,
    DEVICE_FILTERS_DESCRIPTION,
    DEVICE_LISTING_QUERY,
    DEVICE_PATH,
    GUARDED_WRITE_HEADERS,
    IF_MATCH_HEADER,
    IF_NONE_MATCH_READ_HEADER,
    IF_UNMODIFIED_SINCE_HEADER,
    DeviceId,
    DeviceListingDep,
)
from devreg.devices.schemas import (
    BULK_MAX,
    BulkResult,
    DeviceBulkUpdate,
    DeviceCreate,
    DevicePage,
    DeviceRead,
    DeviceUpdate,
)
from devreg.edge import is_head_request
from devreg.idempotency.header import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED,
    Idempotency,
    idempotent_create,
)
from devreg.locations import created_location
from devreg.problems import described_headers, problem_responses
from devreg.querystring import page_response
from devreg.schemas import Id

router = APIRouter(
    route_class=ApiRoute,
    prefix="/devices",
    tags=["devices"],
    responses=problem_responses(401, 403),
)

_ETAG = {
    "ETag": 'The device\'s version, quoted (`"3"`): for If-Match and If-None-Match.',
    "Last-Modified": "When the device last changed (`updated_at`): for If-Unmodified-Since.",
}
_TAGGED = {"headers": described_headers(_ETAG)}
# PUT and PATCH of one device: If-Match, If-None-Match and If-Unmodified-Since guard them.
GUARDED_WRITE: dict[str, Any] = {
    "responses": {200: _TAGGED, **problem_responses(404, 409, 412, 422, 428)},
    "openapi_extra": GUARDED_WRITE_HEADERS,
}
_DEVICE_READ = TypeAdapter(DeviceRead)


def _tagged(
    device: DeviceRead, *, status_code: int = status.HTTP_200_OK, location: str | None = None
) -> Response:
    """The device as its model writes it, with its version as ETag, its last change as
    Last-Modified (and where a created one is).

    Returned as the response itself: FastAPI would otherwise validate the device again against
    the route's response model and merge a separate headers-only response into its own, at 3% of
    a GET's instructions."""
    json = _DEVICE_READ.dump_json(device)
    return _tagged_json(json, device.version, device.updated_at, status_code, location)


def _tagged_json(
    json: str | bytes,
    version: int,
    updated_at: datetime,
    status_code: int = status.HTTP_200_OK,
    location: str | None = None,
) -> Response:
    """A device's JSON, with its ETag and Last-Modified (and where a created one is)."""
    headers = {"ETag": etag(version), "Last-Modified": last_modified(updated_at)}
    if location is not None:
        headers["Location"] = location
    return Response(json, status_code=status_code, headers=headers, media_type="application/json")


BulkCreate = Annotated[list[DeviceCreate], Body(min_length=1, max_length=BULK_MAX)]
BulkUpdate = Annotated[list[DeviceBulkUpdate], Body(min_length=1, max_length=BULK_MAX)]
BulkDelete = Annotated[list[Id], Body(min_length=1, max_length=BULK_MAX)]


# Routes in the order a request is matched against them: FastAPI 0.165 tries each in turn, at
# about 10,000 instructions a route, so the busiest come first. A fixed path (`/export`,
# `/bulk`) may follow `/{device_id}`: a device's segment is never one of them (_DeviceSegment).


@router.post(
    "/{device_id}/heartbeat",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={204: {"headers": described_headers(REPLAYED)}, **problem_responses(404, 422)},
    openapi_extra=documented(IDEMPOTENCY_KEY_HEADER),
)
async def record_heartbeat(device_id: DeviceId, call: Call) -> Response:
    """The device is alive: sets `last_seen_at` to now."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    await service.record_heartbeat(call.db, device_id, principal=call.principal)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    await idempotency.remember(response)
    return response


@router.post(
    "",
    response_model=DeviceRead,
    **idempotent_create(**_ETAG, Location="Where the new device is."),
)
async def create_device(data: DeviceCreate, call: Call) -> Response:
    idempotency = Idempotency(call)
    await idempotency.claim()
    device = await service.register_device(call.db, data=data, principal=call.principal)
    response = _tagged(
        device, status_code=status.HTTP_201_CREATED, location=created_location(call, device.id)
    )
    await idempotency.remember(response, "Location", "ETag", "Last-Modified")
    return response


@router.get(
    DEVICE_PATH,
    response_model=DeviceRead,
    responses={
        200: _TAGGED,
        304: {"description": "Not Modified", "headers": described_headers({"ETag": _ETAG["ETag"]})},
        **problem_responses(404, 412, 422),
    },
    openapi_extra=documented(
        IF_MATCH_HEADER, IF_NONE_MATCH_READ_HEADER, IF_UNMODIFIED_SINCE_HEADER
    ),
)
async def get_device(device_id: DeviceId, call: Call) -> Response:
    conditions = read_preconditions(call)
    device = await service.get_device_json(
        call.db, device_id, principal=call.principal, conditions=conditions
    )
    if conditions is not None and not_modified(conditions.if_none_match, device.version):
        return Response(
            status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(device.version)}
        )
    return _tagged_json(device.json, device.version, device.updated_at)


@router.patch(DEVICE_PATH, response_model=DeviceRead, **GUARDED_WRITE)
async def update_device(device_id: DeviceId, data: DeviceUpdate, call: Call) -> Response:
    condition = write_precondition(call)
    device = await service.update_device(
        call.db, device_id, data=data, condition=condition, principal=call.principal
    )
    return _tagged(device)


@router.put(DEVICE_PATH, response_model=DeviceRead, **GUARDED_WRITE)
async def replace_device(device_id: DeviceId, data: DeviceCreate, call: Call) -> Response:
    condition = write_precondition(call)
    device = await service.replace_device(
        call.db, device_id, data=data, condition=condition, principal=call.principal
    )
    return _tagged(device)


@router.delete(
    DEVICE_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 412, 422, 428),
    openapi_extra=GUARDED_WRITE_HEADERS,
)
async def delete_device(device_id: DeviceId, call: Call) -> None:
    await service.delete_device(
        call.db, device_id, condition=write_precondition(call), principal=call.principal
    )


@router.get(
    "",
    response_model=DevicePage,
    responses=problem_responses(400, 422),
    description=DEVICE_FILTERS_DESCRIPTION,
    openapi_extra=documented(*DEVICE_LISTING_QUERY.parameters()),
)
async def list_devices(call: Call, listing: DeviceListingDep) -> object:
    result = await service.list_devices(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(DevicePage, result)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {media: {} for media in EXPORT_MEDIA_TYPES.values()},
            "description": "Every matching device, by id, streamed.",
            "headers": described_headers(
                {"Content-Disposition": "`attachment`, named `devices.csv` or `devices.ndjson`."}
            ),
        },
        **problem_responses(400, 422),
    },
    description=DEVICE_FILTERS_DESCRIPTION,
    openapi_extra=documented(*DEVICE_EXPORT_QUERY.parameters()),
)
async def export_devices(call: Call, work: StreamingWorkDep) -> StreamingResponse:
    """Every device matching the filters (those of `GET /devices`), streamed in constant memory."""
    query = DEVICE_EXPORT_QUERY(call)
    return _ExportResponse(
        export.export_devices(
            work, filters=query.filters(call), format=query.format, principal=call.principal
        ),
        media_type=EXPORT_MEDIA_TYPES[query.format],
        headers={"Content-Disposition": f'attachment; filename="devices.{query.format.value}"'},
    )


class _ExportResponse(StreamingResponse):
    """An export whose first chunk is read before anything is sent: a failure that early (a
    timeout, the database gone) is still an error response, not a 200 whose stream breaks off.
    A HEAD request's export is not run: its rows would all be read only to be dropped."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = cast(AsyncGenerator[bytes, None], self.body_iterator)
        if is_head_request(scope):
            await chunks.aclose()  # not started: closed, it runs nothing and yields nothing
        else:
            # An error here reaches the app's handlers (nothing is sent yet) and, on its way,
            # rolls the export's session back.
            first = await anext(chunks, None)
            self.body_iterator = _prepended(first, chunks)
        await super().__call__(scope, receive, send)


async def _prepended(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
    async for chunk in rest:
        yield chunk


@router.patch("/bulk", response_model=BulkResult, responses=problem_responses(409, 422, 428))
async def update_devices(items: BulkUpdate, call: Call) -> BulkResult:
    """Up to 10,000 `{id, ...fields}` changes, all or nothing."""
    ids = await bulk.update_devices(
        call.db,
        items=items,
        principal=call.principal,
        require_if_match=call.settings.require_if_match,
    )
    return BulkResult(ids=ids)


@router.delete(
    "/bulk", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(409, 422, 428)
)
async def delete_devices(ids: BulkDelete, call: Call) -> None:
    """Up to 10,000 ids, all or nothing: one unknown id and none is deleted. A 409 when a
    concurrent write held the same devices in an order that could not be waited out (nothing
    deleted; send it again)."""
    await bulk.delete_devices(
        call.db, ids=ids, principal=call.principal, require_if_match=call.settings.require_if_match
    )


@router.post("/bulk", response_model=BulkResult, **idempotent_create())
async def create_devices(items: BulkCreate, call: Call) -> Response:
    """Up to 10,000 devices, all or nothing; the new ids in the order given."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    ids = await bulk.register_devices(call.db, items=items, principal=call.principal)
    response = Response(
        BulkResult(ids=ids).model_dump_json(),
        status_code=status.HTTP_201_CREATED,
        media_type="application/json",
    )
    await idempotency.remember(response)
    return response
