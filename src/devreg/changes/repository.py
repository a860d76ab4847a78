from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    case,
    delete,
    func,
    literal_column,
    null,
    text,
)

from devreg.changes.actor import SET_ACTOR
from devreg.changes.filters import SORT_KEYS, ChangeFilter
from devreg.changes.models import READER, Change, ObjectType
from devreg.changes.schemas import ChangeRead
from devreg.db.keyset import TableListing, any_of, pinned
from devreg.db.rendering import JsonShape
from devreg.db.session import UNSYNCHRONIZED

_CHANGE_JSON = JsonShape.of_columns(ChangeRead, Change)

_HANDED_OVER = (Change.action == literal_column("'update'")) & Change.before.has_key(
    literal_column("'owner_id'")
)
_CHANGE_JSON_FOR_OWNER = JsonShape.of_columns(
    ChangeRead, Change, before=case((_HANDED_OVER, null()), else_=Change.before)
)
"""A record as a non-admin token sees it: a device handed over to its user shows no `before`,
which holds the previous owner's values (and id) of what the handover changed."""


class ChangeRepository(TableListing[ChangeFilter]):
    shape = _CHANGE_JSON
    sort_value_types = SORT_KEYS
    table = Change

    async def name_actor(self, actor: str) -> None:
        """Name the actor (changes.actor) of every write in the rest of the transaction."""
        await self.session.execute(text(f"SELECT {SET_ACTOR}"), {"actor": actor})

    async def stop_recording(self) -> None:
        """Record nothing for the rest of the transaction."""
        await self.session.execute(text("SELECT set_config('devreg.record_changes', 'off', true)"))

    async def delete_older_than(self, age: timedelta) -> int:
        """Delete the records older than `age` by the database's clock, which wrote their `at`."""
        statement = delete(Change).where(Change.at < func.now() - age)
        result = await self.session.execute(statement, execution_options=UNSYNCHRONIZED)
        return int(result.rowcount)  # type: ignore[attr-defined]

    def _pinned_column(self, filters: ChangeFilter) -> SQLColumnExpression[Any] | None:
        """READER for a user's records, but those of one object (a device's history): the index
        on (object_type, object_id, id) serves them in order, where led by the reader the page
        read the user's records past every newer one of its other devices."""
        one_object = len(filters.object_type) == 1 and len(filters.object_id) == 1
        return None if filters.visible_to is None or one_object else READER

    def _shape(self, filters: ChangeFilter) -> JsonShape:
        return _CHANGE_JSON if filters.visible_to is None else _CHANGE_JSON_FOR_OWNER

    def _conditions(self, filters: ChangeFilter) -> Sequence[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        object_types = filters.object_type
        if filters.object_id and not object_types:
            # Every type, named: the index on (object_type, object_id, id) then finds an
            # object's records, where without its first column it was read whole (0.5 s at 3
            # million records, for the few of one device).
            object_types = tuple(ObjectType)
        for column, values in (
            (Change.object_type, object_types),
            (Change.object_id, filters.object_id),
            (Change.user_id, filters.user_id),
            (Change.action, filters.action),
        ):
            conditions += any_of(column, values)
        if filters.visible_to is not None:
            conditions.append(_visible_to(filters.visible_to))
        if filters.since is not None:
            conditions.append(Change.at >= filters.since)
        if filters.until is not None:
            conditions.append(Change.at < filters.until)
        return conditions


def _visible_to(user_id: int) -> ColumnElement[bool]:
    """What a user's non-admin token sees of the log: the records of the user's devices from
    the user's time with each (a device given to the user brings none of its previous owner's;
    one given away or deleted keeps the user's), and of the user's own record (READER). Not
    what an admin token of the same user did elsewhere: that reaches other users' devices and
    records."""
    return pinned(READER, user_id)
