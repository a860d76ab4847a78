"""What a user listing asks for: filters (ANDed; several values of one filter are ORed)."""

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from devreg.pagination import Sort

SORT_KEYS: dict[str, type] = {"id": int, "name": str, "created_at": datetime}
DEFAULT_SORT = Sort("id")


@dataclass(frozen=True)
class UserFilter:
    name: tuple[str, ...] = ()
    name_contains: tuple[str, ...] = ()
    name_starts_with: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None

    def describe(self) -> dict[str, Any]:
        """The filters in use, as JSON-able data: what a cursor's fingerprint is made of."""
        return {name: value for name, value in asdict(self).items() if value not in ((), None)}
