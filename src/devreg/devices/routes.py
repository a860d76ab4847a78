from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from devreg.calls import ApiRoute, Call, documented, header_parameter
from devreg.conditional import IfMatch, etag, not_modified
from devreg.db.session import StreamingSessionDep
from devreg.devices import bulk, export, service
from devreg.devices.export import EXPORT_MEDIA_TYPES, ExportFormat
from devreg.devices.filters import (
    DEFAULT_SORT,
    RELEVANCE_SORT,
    SORT_KEYS,
    DeviceFilter,
    JsonScalar,
)
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import (
    BULK_MAX,
    BulkResult,
    DeviceBulkUpdate,
    DeviceCreate,
    DevicePage,
    DeviceRead,
    DeviceUpdate,
)
from devreg.errors import InvalidParameter, PreconditionRequired, problem_responses
from devreg.idempotency.header import IDEMPOTENCY_KEY_HEADER, Idempotency
from devreg.locations import created_location
from devreg.querystring import (
    LISTING_PARAMETERS,
    Listing,
    PageOptionsDep,
    json_scalar,
    page_response,
    reject_unknown,
)
from devreg.schemas import BIGINT_MAX, Id, Instant, SearchText, ShortText, Tag

router = APIRouter(
    route_class=ApiRoute,
    prefix="/devices",
    tags=["devices"],
    responses=problem_responses(401, 403),
)

DeviceId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The device's id.")]

IF_MATCH_HEADER = header_parameter(
    "If-Match", "Apply only if the device's ETag is one of these (else 412)."
)
IF_NONE_MATCH_HEADER = header_parameter(
    "If-None-Match", "304 without a body if the ETag is one of these."
)
# PUT and PATCH of one device: If-Match guards them.
GUARDED_WRITE: dict[str, Any] = {
    "responses": problem_responses(404, 409, 412, 422, 428),
    "openapi_extra": documented(IF_MATCH_HEADER),
}
# The creating POSTs: 201, or the first answer again for a repeated Idempotency-Key.
IDEMPOTENT_CREATE: dict[str, Any] = {
    "status_code": status.HTTP_201_CREATED,
    "responses": problem_responses(409, 422),
    "openapi_extra": documented(IDEMPOTENCY_KEY_HEADER),
}


def _tagged(device: DeviceRead, response: Response) -> DeviceRead:
    """The device, its response carrying the device's version as ETag."""
    response.headers["ETag"] = etag(device.version)
    return device


def write_precondition(call: Call) -> IfMatch | None:
    """The call's If-Match; without one, None (last write wins) or 428 if REQUIRE_IF_MATCH."""
    if_match = call.headers.get("if-match")
    if if_match is None:
        if call.settings.require_if_match:
            raise PreconditionRequired
        return None
    return IfMatch.parse(if_match)


_FILTER_PARAMETERS = frozenset({
    "status", "owner_id", "model", "name", "name__ic", "name__isw", "serial_number",
    "created_after", "created_before", "last_seen_after", "last_seen_before", "tag",
    "has_owner", "q",
})  # fmt: skip
_ATTRIBUTE_PREFIX = "attr."
Texts = Annotated[list[ShortText] | None, Query()]


async def device_filters(
    request: Request,
    status: Annotated[list[DeviceStatus] | None, Query(description="Any of these.")] = None,
    owner_id: Annotated[list[Id] | None, Query(description="Owned by any of these.")] = None,
    model: Texts = None,
    name: Texts = None,
    name__ic: Annotated[
        list[ShortText] | None, Query(description="Name contains (any case).")
    ] = None,
    name__isw: Annotated[
        list[ShortText] | None, Query(description="Name starts with (any case).")
    ] = None,
    serial_number: Texts = None,
    created_after: Instant | None = None,
    created_before: Instant | None = None,
    last_seen_after: Instant | None = None,
    last_seen_before: Instant | None = None,
    tag: Annotated[list[Tag] | None, Query(description="Has all of these tags.")] = None,
    has_owner: bool | None = None,
    q: Annotated[
        SearchText | None,
        Query(
            description="Search name, serial and model, "
            "forgiving typos and partial words; ordered by relevance unless `sort` is given.",
        ),
    ] = None,
) -> DeviceFilter:
    """Also `attr.<key>=<value>`: attributes contain {key: value} (value read as JSON when it
    parses, else as text)."""
    return DeviceFilter(
        status=tuple(status or ()),
        owner_id=tuple(owner_id or ()),
        model=tuple(model or ()),
        name=tuple(name or ()),
        name_contains=tuple(name__ic or ()),
        name_starts_with=tuple(name__isw or ()),
        serial_number=tuple(serial_number or ()),
        created_after=created_after,
        created_before=created_before,
        last_seen_after=last_seen_after,
        last_seen_before=last_seen_before,
        tags=tuple(tag or ()),
        has_owner=has_owner,
        attributes=_attribute_filters(request),
        search=q,
    )


DeviceFilterDep = Annotated[DeviceFilter, Depends(device_filters)]


async def device_listing(
    request: Request, filters: DeviceFilterDep, options: PageOptionsDep
) -> Listing[DeviceFilter]:
    """Sort keys: `name`, `created_at`, `last_seen_at`, `id`; with `q=`, relevance by default."""
    reject_unknown(request, _FILTER_PARAMETERS | LISTING_PARAMETERS, prefix=_ATTRIBUTE_PREFIX)
    return options.listing(
        filters,
        sort_keys=SORT_KEYS,
        default_sort=RELEVANCE_SORT if filters.search else DEFAULT_SORT,
        item=DeviceRead,
    )


def _attribute_filters(request: Request) -> tuple[tuple[str, tuple[JsonScalar, ...]], ...]:
    values: dict[str, list[JsonScalar]] = {}
    for parameter, raw in request.query_params.multi_items():
        if parameter.startswith(_ATTRIBUTE_PREFIX):
            key = parameter.removeprefix(_ATTRIBUTE_PREFIX)
            if not key or len(key) > 100 or "\x00" in key + raw:
                raise InvalidParameter(parameter, f"{parameter} is not a usable attribute filter")
            values.setdefault(key, []).append(json_scalar(raw))
    return tuple((key, tuple(options)) for key, options in sorted(values.items()))


DeviceListingDep = Annotated[Listing[DeviceFilter], Depends(device_listing)]


BulkCreate = Annotated[list[DeviceCreate], Body(min_length=1, max_length=BULK_MAX)]
BulkUpdate = Annotated[list[DeviceBulkUpdate], Body(min_length=1, max_length=BULK_MAX)]
BulkDelete = Annotated[list[Id], Body(min_length=1, max_length=BULK_MAX)]


# Routes in the order a request is matched against them: FastAPI 0.165 tries each in turn, at
# about 10,000 instructions a route, so the busiest come first. A fixed path (`/export`, `/bulk`)
# comes before the `/{device_id}` route of the same method, which would otherwise take it.


@router.post(
    "/{device_id}/heartbeat",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 422),
    openapi_extra=documented(IDEMPOTENCY_KEY_HEADER),
)
async def record_heartbeat(device_id: DeviceId, call: Call) -> None:
    """The device is alive: sets `last_seen_at` to now."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    await service.record_heartbeat(call.db, device_id, principal=call.principal)
    await idempotency.remember(status.HTTP_204_NO_CONTENT)


@router.post("", response_model=DeviceRead, **IDEMPOTENT_CREATE)
async def create_device(data: DeviceCreate, call: Call, response: Response) -> object:
    idempotency = Idempotency(call)
    await idempotency.claim()
    device = await service.register_device(call.db, data=data, principal=call.principal)
    response.headers["Location"] = created_location(call, device.id)
    _tagged(device, response)
    replayed = {name: response.headers[name] for name in ("Location", "ETag")}
    await idempotency.remember(status.HTTP_201_CREATED, device, replayed)
    return device


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {media: {} for media in EXPORT_MEDIA_TYPES.values()},
            "description": "Every matching device, by id, streamed.",
        },
        **problem_responses(400, 422),
    },
)
async def export_devices(
    call: Call,
    filters: DeviceFilterDep,
    session: StreamingSessionDep,
    format: Annotated[ExportFormat, Query(description="`csv` or `ndjson`.")] = ExportFormat.CSV,
) -> StreamingResponse:
    """Every device matching the filters (those of `GET /devices`), streamed in constant memory."""
    reject_unknown(call, _FILTER_PARAMETERS | {"format"}, prefix=_ATTRIBUTE_PREFIX)
    return StreamingResponse(
        export.export_devices(session, filters=filters, format=format, principal=call.principal),
        media_type=EXPORT_MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="devices.{format.value}"'},
    )


@router.get(
    "/{device_id}",
    response_model=DeviceRead,
    responses={304: {"description": "Not Modified"}, **problem_responses(404, 422)},
    openapi_extra=documented(IF_NONE_MATCH_HEADER),
)
async def get_device(device_id: DeviceId, call: Call, response: Response) -> object:
    device = await service.get_device(call.db, device_id, principal=call.principal)
    if not_modified(call.headers.get("if-none-match"), device.version):
        return Response(
            status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(device.version)}
        )
    return _tagged(device, response)


@router.patch("/bulk", response_model=BulkResult, responses=problem_responses(409, 422))
async def update_devices(items: BulkUpdate, call: Call) -> BulkResult:
    """Up to 10,000 `{id, ...fields}` changes, all or nothing."""
    ids = await bulk.update_devices(call.db, items=items, principal=call.principal)
    return BulkResult(ids=ids)


@router.delete("/bulk", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(422))
async def delete_devices(ids: BulkDelete, call: Call) -> None:
    """Up to 10,000 ids, all or nothing: one unknown id and none is deleted."""
    await bulk.delete_devices(call.db, ids=ids, principal=call.principal)


@router.patch("/{device_id}", response_model=DeviceRead, **GUARDED_WRITE)
async def update_device(
    device_id: DeviceId, data: DeviceUpdate, call: Call, response: Response
) -> object:
    if_match = write_precondition(call)
    device = await service.update_device(
        call.db, device_id, data=data, if_match=if_match, principal=call.principal
    )
    return _tagged(device, response)


@router.put("/{device_id}", response_model=DeviceRead, **GUARDED_WRITE)
async def replace_device(
    device_id: DeviceId, data: DeviceCreate, call: Call, response: Response
) -> object:
    if_match = write_precondition(call)
    device = await service.replace_device(
        call.db, device_id, data=data, if_match=if_match, principal=call.principal
    )
    return _tagged(device, response)


@router.delete(
    "/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 412, 422, 428),
    openapi_extra=documented(IF_MATCH_HEADER),
)
async def delete_device(device_id: DeviceId, call: Call) -> None:
    await service.delete_device(
        call.db, device_id, if_match=write_precondition(call), principal=call.principal
    )


@router.get("", response_model=DevicePage, responses=problem_responses(400, 422))
async def list_devices(call: Call, listing: DeviceListingDep) -> object:
    result = await service.list_devices(
        call.db, filters=listing.filters, page=listing.page, principal=call.principal
    )
    return page_response(DevicePage, result)


@router.post("/bulk", response_model=BulkResult, **IDEMPOTENT_CREATE)
async def create_devices(items: BulkCreate, call: Call) -> BulkResult:
    """Up to 10,000 devices, all or nothing; the new ids in the order given."""
    idempotency = Idempotency(call)
    await idempotency.claim()
    ids = await bulk.register_devices(call.db, items=items, principal=call.principal)
    result = BulkResult(ids=ids)
    await idempotency.remember(status.HTTP_201_CREATED, result)
    return result
