from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.changes.filters import ChangeFilter
from devreg.changes.models import Change, ObjectType
from devreg.changes.schemas import ChangeRead
from devreg.db.keyset import count_matching, fetch_page
from devreg.db.rendering import JsonShape, Rendered, instant
from devreg.devices.models import Device
from devreg.pagination import Position, Sort, SortValue

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


class ChangeRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_page(
        self,
        filters: ChangeFilter,
        *,
        sort: Sort,
        after: Position | None,
        limit: int,
        fields: frozenset[str] | None,
    ) -> list[tuple[Rendered, SortValue]]:
        """Up to `limit` + 1 matching changes after `after` (their `fields`, or all), each with
        its sort value."""
        return await fetch_page(
            self.session,
            _CHANGE_JSON.select(fields).where(*self._conditions(filters)),
            key=Change.id,
            id_column=Change.id,
            descending=sort.descending,
            nullable=False,
            after=after,
            limit=limit,
        )

    async def count(self, filters: ChangeFilter, *, exact: bool) -> int:
        return await count_matching(self.session, self._matching(filters), exact=exact)

    async def delete_older_than(self, moment: datetime) -> int:
        statement = delete(Change).where(Change.at < moment)
        result = await self.session.execute(statement)
        return int(result.rowcount)  # type: ignore[attr-defined]

    @classmethod
    def _matching(cls, filters: ChangeFilter) -> Select[Any]:
        return select(Change).where(*cls._conditions(filters))

    @staticmethod
    def _conditions(filters: ChangeFilter) -> Sequence[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        for column, values in (
            (Change.object_type, filters.object_type),
            (Change.object_id, filters.object_id),
            (Change.user_id, filters.user_id),
            (Change.action, filters.action),
        ):
            if values:
                conditions.append(column.in_(values))
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
