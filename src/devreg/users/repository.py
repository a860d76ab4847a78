from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    ScalarResult,
    delete,
    func,
    insert,
    select,
    update,
)

from devreg.db.driver import violations_raised_as
from devreg.db.keyset import TableListing, any_of, any_pattern
from devreg.db.rendering import JsonShape
from devreg.errors import EmailAlreadyRegistered, UserHasDevices
from devreg.users.filters import SORT_KEYS, UserFilter
from devreg.users.models import User
from devreg.users.schemas import UserRead

_USER_JSON = JsonShape.of_columns(UserRead, User)


_VIOLATIONS = {
    "uq_users_email_lower": EmailAlreadyRegistered,
    "fk_devices_owner_id_users": UserHasDevices,
}


class UserRepository(TableListing[UserFilter]):
    shape = _USER_JSON
    sort_value_types = SORT_KEYS
    table = User

    async def get_by_id(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id)

    def _conditions(self, filters: UserFilter) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if filters.visible_to is not None:
            conditions.append(User.id == filters.visible_to)
        conditions += any_of(User.name, filters.name)
        conditions += any_pattern((User.name,), filters.name_contains, starts_with=False)
        conditions += any_pattern((User.name,), filters.name_starts_with, starts_with=True)
        if filters.email:
            conditions.append(
                # PostgreSQL's lower() on both sides: Python's folds some letters otherwise.
                func.lower(User.email).in_([func.lower(email) for email in filters.email])
            )
        if filters.created_after is not None:
            conditions.append(User.created_at > filters.created_after)
        if filters.created_before is not None:
            conditions.append(User.created_at < filters.created_before)
        return conditions

    async def add(self, values: dict[str, Any]) -> User:
        return (await self._returning(insert(User).values(values).returning(User))).one()

    async def update(
        self, user_id: int, changes: dict[str, Any], *, unchanged_since: datetime | None = None
    ) -> User | None:
        """The user changed, or None if there is none (or it changed after `unchanged_since`)."""
        statement = (
            update(User)
            .where(User.id == user_id, *_unchanged_since(unchanged_since))
            .values(changes)
            .returning(User)
        )
        return (await self._returning(statement)).one_or_none()

    async def hold_against_deletion(self, user_id: int) -> User | None:
        """The user, held until the transaction ends against another deletion or change of it,
        not against a device given to it meanwhile (a foreign key's check takes a weaker
        lock); None if there is none."""
        statement = select(User).where(User.id == user_id).with_for_update(key_share=True)
        user: User | None = await self.session.scalar(statement)
        return user

    async def lock(self, user_id: int) -> bool:
        """Hold the user until the transaction ends (no device can be given it meanwhile):
        whether it exists."""
        statement = select(User.id).where(User.id == user_id).with_for_update()
        return await self.session.scalar(statement) is not None

    async def delete(self, user_id: int, *, unchanged_since: datetime | None = None) -> bool:
        """Whether the user was there to delete (and had not changed after `unchanged_since`)."""
        statement = (
            delete(User)
            .where(User.id == user_id, *_unchanged_since(unchanged_since))
            .returning(User.id)
        )
        with violations_raised_as(_VIOLATIONS):
            deleted = await self.session.scalar(statement)
        return deleted is not None

    async def _returning(self, statement: Executable) -> ScalarResult[User]:
        with violations_raised_as(_VIOLATIONS):
            return await self.session.scalars(
                statement, execution_options={"populate_existing": True}
            )


def _unchanged_since(since: datetime | None) -> list[ColumnElement[bool]]:
    """No change after `since`, an HTTP-date (to the second: conditional.changed_since)."""
    return [] if since is None else [func.date_trunc("second", User.updated_at) <= since]
