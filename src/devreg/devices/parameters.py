"""What the device routes read from a request beside its body: the device's path segment, the
conditional headers, and a listing's or an export's query string (its filters). Other domains'
routes that list or name devices read them the same way."""

from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from devreg.calls import documented, header_parameter
from devreg.devices.filters import DEFAULT_SORT, SORT_KEYS, DeviceFilter, JsonScalar
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import DeviceRead, FileFormat
from devreg.errors import InvalidParameter
from devreg.querystring import (
    Listing,
    ListingQueryString,
    NamePatterns,
    PageQuery,
    QueryString,
    json_scalar,
)
from devreg.schemas import (
    Id,
    InstantParameter,
    RoundedUpInstantParameter,
    SearchText,
    ShortText,
    Tag,
    storable_text,
)

DeviceId = Annotated[Id, Path(description="The device's id.")]


class _DeviceSegment(Convertor[str]):
    """A device's own path segment: anything but the collection's fixed paths, so that a method
    those lack (`GET /devices/bulk`) is a 405 naming theirs, not a 422 for a bad device id."""

    regex = r"(?!(?:bulk|export)$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("device", _DeviceSegment())
DEVICE_PATH = "/{device_id:device}"

IF_MATCH_HEADER = header_parameter(
    "If-Match", "Only if the device's ETag is one of these, or `*` (else 412)."
)
IF_NONE_MATCH_READ_HEADER = header_parameter(
    "If-None-Match", "304 without a body if the ETag is one of these, or `*`."
)
IF_NONE_MATCH_WRITE_HEADER = header_parameter(
    "If-None-Match", "412 if the device's ETag is one of these, or `*` (any)."
)
IF_UNMODIFIED_SINCE_HEADER = header_parameter(
    "If-Unmodified-Since",
    "Without If-Match: only if the device has not changed since this HTTP-date (`updated_at`, "
    "to the second; else 412).",
)
GUARDED_WRITE_HEADERS = documented(
    IF_MATCH_HEADER, IF_NONE_MATCH_WRITE_HEADER, IF_UNMODIFIED_SINCE_HEADER
)


_ATTRIBUTE_PREFIX = "attr."


DEVICE_FILTERS_DESCRIPTION = (
    "Filters combine with AND; a filter given several times matches any of its values (`tag`: "
    "all of them). Also `attr.<key>=<value>`, which OpenAPI cannot name as a parameter: the "
    "device's attributes contain `{key: value}`, the value read as JSON where it parses "
    "(`attr.floor=3`, `attr.managed=true`), else as text."
)


class DeviceFilterQuery(BaseModel):
    """A device listing's filters (and its export's); `attr.<key>` is read from the request."""

    status: tuple[DeviceStatus, ...] = Field((), description="Any of these.")
    owner_id: tuple[Id, ...] = Field((), description="Owned by any of these.")
    model: tuple[ShortText, ...] = ()
    name: tuple[ShortText, ...] = ()
    name__ic: NamePatterns = Field((), description="Name contains (any case).")
    name__isw: NamePatterns = Field((), description="Name starts with (any case).")
    serial_number: tuple[ShortText, ...] = ()
    created_after: InstantParameter | None = None
    created_before: RoundedUpInstantParameter | None = None
    last_seen_after: InstantParameter | None = None
    last_seen_before: RoundedUpInstantParameter | None = None
    tag: tuple[Tag, ...] = Field((), description="Has all of these tags.")
    has_owner: bool | None = None
    q: SearchText | None = Field(
        None,
        description="Search name, serial and model, "
        "forgiving typos and partial words; ordered by relevance unless `sort` is given.",
    )

    def filters(self, request: Request) -> DeviceFilter:
        return DeviceFilter(
            status=self.status,
            owner_id=self.owner_id,
            model=self.model,
            name=self.name,
            name_contains=self.name__ic,
            name_starts_with=self.name__isw,
            serial_number=self.serial_number,
            created_after=self.created_after,
            created_before=self.created_before,
            last_seen_after=self.last_seen_after,
            last_seen_before=self.last_seen_before,
            tags=self.tag,
            has_owner=self.has_owner,
            attributes=_attribute_filters(request),
            search=self.q,
        )


class DeviceListingQuery(DeviceFilterQuery, PageQuery):
    pass


class DeviceExportQuery(DeviceFilterQuery):
    format: FileFormat = Field(FileFormat.CSV, description="`csv` or `ndjson`.")


DEVICE_LISTING_QUERY = ListingQueryString(
    DeviceListingQuery,
    item=DeviceRead,
    sort_keys=SORT_KEYS,
    default_sort=DEFAULT_SORT,
    prefix=_ATTRIBUTE_PREFIX,
)
DEVICE_EXPORT_QUERY = QueryString(DeviceExportQuery, prefix=_ATTRIBUTE_PREFIX)


async def device_listing(request: Request) -> Listing[DeviceFilter]:
    """Sort keys: `name`, `created_at`, `last_seen_at`, `id`; with `q=`, relevance by default."""
    query = DEVICE_LISTING_QUERY(request)
    filters = query.filters(request)
    page = DEVICE_LISTING_QUERY.page(query, default_sort=filters.default_sort)
    return Listing(filters=filters, page=page)


def _attribute_filters(request: Request) -> tuple[tuple[str, tuple[JsonScalar, ...]], ...]:
    values: dict[str, list[JsonScalar]] = {}
    for parameter, raw in request.query_params.multi_items():
        if parameter.startswith(_ATTRIBUTE_PREFIX):
            key = parameter.removeprefix(_ATTRIBUTE_PREFIX)
            value = json_scalar(raw)
            if not _usable_attribute(key, value):
                raise InvalidParameter(parameter, f"{parameter} is not a usable attribute filter")
            values.setdefault(key, []).append(value)
    return tuple((key, tuple(options)) for key, options in sorted(values.items()))


def _usable_attribute(key: str, value: JsonScalar) -> bool:
    """Whether a stored attribute could have this key and value: storable text, as attributes
    are (a value '"\\u0000"' is NUL, '"\\ud800"' a lone surrogate); a key of any length, the
    empty one too, as a device's attributes may have."""
    try:
        for text in (key, value) if isinstance(value, str) else (key,):
            storable_text(text)
    except ValueError:
        return False
    return True


DeviceListingDep = Annotated[Listing[DeviceFilter], Depends(device_listing)]
