import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from devreg.devices.models import DeviceStatus
from devreg.pagination import Page
from devreg.schemas import (
    REPEATS_MAX,
    Id,
    InputSchema,
    Instant,
    JsonObject,
    Schema,
    SearchText,
    ShortText,
    Tag,
    UpdateSchema,
)

TAGS_MAX = 100


class FileFormat(enum.StrEnum):
    """The formats devices are imported from and exported to."""

    CSV = "csv"
    NDJSON = "ndjson"


def _distinct(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX), AfterValidator(_distinct)]


class DeviceCreate(InputSchema):
    """A new device, or (for PUT) the whole of a device's new state: left-out fields reset."""

    name: ShortText
    serial_number: ShortText | None = None
    model: ShortText | None = None
    status: DeviceStatus = DeviceStatus.ACTIVE
    owner_id: Id | None = None
    tags: Tags = Field(default_factory=list)
    attributes: JsonObject = Field(default_factory=dict)
    last_seen_at: Instant | None = None


class DeviceUpdate(UpdateSchema):
    """Only the fields sent change. `null` clears the optional fields; `name`, `status`, `tags`
    and `attributes` can be left out but never set to null."""

    # Non-nullable fields default to None only to tell "left out" from "sent"; defaults are not
    # validated, and an explicit null fails validation.
    name: ShortText = None  # type: ignore[assignment]
    serial_number: ShortText | None = None
    model: ShortText | None = None
    status: DeviceStatus = None  # type: ignore[assignment]
    owner_id: Id | None = None
    tags: Tags = None  # type: ignore[assignment]
    attributes: JsonObject = None  # type: ignore[assignment]
    last_seen_at: Instant | None = None


class OnConflict(enum.StrEnum):
    """What an import does with a row whose serial number is already registered."""

    ERROR = "error"
    SKIP = "skip"
    UPDATE = "update"


BULK_MAX = 10_000


class DeviceBulkUpdate(DeviceUpdate):
    """One item of a bulk update: which device, and the fields to change."""

    id: Id


class BulkResult(Schema):
    ids: list[int]


class DeviceFilterOptions(InputSchema):
    """Listing filters given outside a query string (the CLI), checked by the same rules."""

    status: list[DeviceStatus] = Field(default_factory=list, max_length=REPEATS_MAX)
    owner_id: list[Id] = Field(default_factory=list, max_length=REPEATS_MAX)
    tag: list[Tag] = Field(default_factory=list, max_length=REPEATS_MAX)
    q: SearchText | None = None


class DeviceOwner(Schema):
    id: int
    name: str


class DeviceRead(Schema):
    id: int
    name: str
    serial_number: str | None
    model: str | None
    status: DeviceStatus
    owner_id: int | None
    owner: DeviceOwner | None
    tags: list[str]
    attributes: dict[str, Any]
    last_seen_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class DevicePage(Page[DeviceRead]):
    pass
