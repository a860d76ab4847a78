from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, ColumnElement, any_, cast, delete, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from devreg.auth.models import ApiToken
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
            conditions.append(_visible_to(filters.visible_to))
        if filters.since is not None:
            conditions.append(Change.at >= filters.since)
        if filters.until is not None:
            conditions.append(Change.at < filters.until)
        return conditions


def _visible_to(user_id: int) -> ColumnElement[bool]:
    """What a user's non-admin token sees of the log: what the user's non-admin tokens did (to
    the user's own devices and record, as such a token can touch nothing else), the history of
    the devices the user owns, and of the user's own record. Not what an admin token of the
    same user did: that reaches other users' devices and records."""
    owned = _ids_array(Device.id, Device.owner_id == user_id)
    own_tokens = _ids_array(ApiToken.id, ApiToken.user_id == user_id, ApiToken.admin.is_(False))
    return or_(
        (Change.user_id == user_id) & (Change.token_id == any_(own_tokens)),
        (Change.object_type == ObjectType.DEVICE) & (Change.object_id == any_(owned)),
        (Change.object_type == ObjectType.USER) & (Change.object_id == user_id),
    )


def _ids_array(
    column: InstrumentedAttribute[int], *conditions: ColumnElement[bool]
) -> ColumnElement[Any]:
    """The ids as one array, computed once: `= ANY(array)` is an index condition, where
    `IN (subquery)` is a filter on every row of the log (a hashed SubPlan). The cast makes it
    an array expression: `= ANY (SELECT ...)` alone would compare each row with the array."""
    ids = select(func.array_agg(column)).where(*conditions).scalar_subquery()
    return cast(ids, ARRAY(BigInteger))
