"""What a device listing asks for: filters (ANDed; several values of one filter are ORed)."""

from dataclasses import dataclass
from datetime import datetime

from devreg.devices.models import DeviceStatus
from devreg.pagination import Sort

JsonScalar = str | int | float | bool | None

# Sort keys a client may ask for, with the Python type of their values (for cursors).
SORT_KEYS: dict[str, type] = {
    "id": int,
    "name": str,
    "created_at": datetime,
    "last_seen_at": datetime,
}
NULLABLE_SORT_KEYS = frozenset({"last_seen_at"})
# With `q=` and no `sort`: best match first (no client may ask for it by name).
RELEVANCE = "relevance"
DEFAULT_SORT = Sort("id")
RELEVANCE_SORT = Sort(RELEVANCE, descending=True)
# The type of every sort's values, relevance's (a similarity) included.
CURSOR_VALUE_TYPES: dict[str, type] = {**SORT_KEYS, RELEVANCE: float}


@dataclass(frozen=True)
class DeviceFilter:
    status: tuple[DeviceStatus, ...] = ()
    owner_id: tuple[int, ...] = ()
    model: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    name_contains: tuple[str, ...] = ()
    name_starts_with: tuple[str, ...] = ()
    serial_number: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    last_seen_after: datetime | None = None
    last_seen_before: datetime | None = None
    tags: tuple[str, ...] = ()
    has_owner: bool | None = None
    # attribute name -> the values it may have (attributes @> {name: value})
    attributes: tuple[tuple[str, tuple[JsonScalar, ...]], ...] = ()
    search: str | None = None
    # Only this user's devices: what a non-admin token may see, whatever else was asked.
    visible_to: int | None = None

    @property
    def default_sort(self) -> Sort:
        return RELEVANCE_SORT if self.search else DEFAULT_SORT
