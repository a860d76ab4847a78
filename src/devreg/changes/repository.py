from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, or_, select

from devreg.changes.filters import ChangeFilter
from devreg.changes.models import Change, ObjectType
from devreg.changes.schemas import ChangeRead
from devreg.db.keyset import TableListing, any_of
from devreg.db.rendering import JsonShape, instant
from devreg.devices.models import Device

_CHANGE_JSON = JsonShape(
    ChangeRead,
    {
        "id": Change.id,
        "at": instant(Change.at),
        "object_type": Change.object_type,
        "object_id": Change.object_id,
        "action": Change.action,
        "user_id": Change.user_id,
        "token_id": Change.token_id,
        "request_id": Change.request_id,
        "before": Change.before,
        "after": Change.after,
    },
    id_column=Change.id,
)


class ChangeRepository(TableListing[ChangeFilter]):
    shape = _CHANGE_JSON
    table = Change

    async def delete_older_than(self, moment: datetime) -> int:
        statement = delete(Change).where(Change.at < moment)
        result = await self.session.execute(statement)
        return int(result.rowcount)  # type: ignore[attr-defined]

    def _conditions(self, filters: ChangeFilter) -> Sequence[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        for column, values in (
            (Change.object_type, filters.object_type),
            (Change.object_id, filters.object_id),
            (Change.user_id, filters.user_id),
            (Change.action, filters.action),
        ):
            conditions += any_of(column, values)
        if filters.visible_to is not None:
            owned = select(Device.id).where(Device.owner_id == filters.visible_to)
            conditions.append(
                or_(
                    Change.user_id == filters.visible_to,
                    (Change.object_type == ObjectType.DEVICE) & Change.object_id.in_(owned),
                )
            )
        if filters.since is not None:
            conditions.append(Change.at >= filters.since)
        if filters.until is not None:
            conditions.append(Change.at < filters.until)
        return conditions
