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
from sqlalchemy.orm import InstrumentedAttribute

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
        read the user's records past every newer one of its other devices. For an admin's, the
        one filter held to one value whose index serves the log's order, if any."""
        if filters.visible_to is not None:
            one_object = len(filters.object_type) == 1 and len(filters.object_id) == 1
            return None if one_object else READER
        held = _held_to_one_value(filters)
        return None if held is None else held[0]

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
        held = _held_to_one_value(filters)
        for column, values in (
            (Change.object_type, object_types),
            (Change.object_id, filters.object_id),
            (Change.user_id, filters.user_id),
            (Change.action, filters.action),
        ):
            if held is not None and column is held[0]:
                conditions.append(pinned(column, held[1]))
            else:
                conditions += any_of(column, values)
        if filters.visible_to is not None:
            conditions.append(_visible_to(filters.visible_to))
        if filters.since is not None:
            conditions.append(Change.at >= filters.since)
        if filters.until is not None:
            conditions.append(Change.at < filters.until)
        return conditions


def _held_to_one_value(filters: ChangeFilter) -> tuple[InstrumentedAttribute[Any], Any] | None:
    """The filter, of those whose index (column, id) lists its records in the log's order, that
    alone holds its column to one value, with that value: `pinned`, it leads the page's order,
    and the page is read from its index from the first matching record. With `=`, PostgreSQL
    read the primary key filtering out every record before it, whenever it took the value's
    records for spread over the log: 0.1-0.45 s a page at 3 million records, for user records
    or deletes all made long ago (newest first), or a user's or an action's records all made
    after a million others (oldest first). Not for a non-admin token's listing (READER leads
    it), nor with `object_id` (its own index serves it), nor when two such filters hold one
    value each: each one's index then serves the page in order, and PostgreSQL picks the
    narrower."""
    if filters.visible_to is not None or filters.object_id:
        return None
    held = [
        (column, values[0])
        for column, values in (
            (Change.user_id, filters.user_id),
            (Change.object_type, filters.object_type),
            (Change.action, filters.action),
        )
        if len(values) == 1
    ]
    return held[0] if len(held) == 1 else None


def _visible_to(user_id: int) -> ColumnElement[bool]:
    """What a user's non-admin token sees of the log: the records of the user's devices from
    the user's time with each (a device given to the user brings none of its previous owner's;
    one given away or deleted keeps the user's), and of the user's own record (READER). Not
    what an admin token of the same user did elsewhere: that reaches other users' devices and
    records."""
    return pinned(READER, user_id)
