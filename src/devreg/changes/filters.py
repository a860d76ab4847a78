"""What a change-log listing asks for: filters (ANDed; several values of one filter are ORed)."""

from dataclasses import dataclass
from datetime import datetime

from devreg.changes.models import Action, ObjectType
from devreg.pagination import Sort

SORT_KEYS: dict[str, type] = {"id": int}
DEFAULT_SORT = Sort("id", descending=True)  # newest first


@dataclass(frozen=True)
class ChangeFilter:
    object_type: tuple[ObjectType, ...] = ()
    object_id: tuple[int, ...] = ()
    user_id: tuple[int, ...] = ()
    action: tuple[Action, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    # Only what this user may see of the log (a non-admin token's): see the repository.
    visible_to: int | None = None
