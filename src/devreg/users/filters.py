"""What a user listing asks for: filters (ANDed; several values of one filter are ORed)."""

from dataclasses import dataclass
from datetime import datetime

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
    # Only this user: what a non-admin token may see of the users.
    visible_to: int | None = None
