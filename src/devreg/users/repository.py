from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, ScalarResult, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.db.constraints import violated_constraint
from devreg.errors import EmailAlreadyRegistered, UserHasDevices
from devreg.users.models import User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id)

    async def list_page(self, *, after_id: int, limit: int) -> Sequence[User]:
        """Up to `limit` + 1 users after `after_id`, by id: the extra row says more exist."""
        statement = select(User).where(User.id > after_id).order_by(User.id).limit(limit + 1)
        return (await self.session.scalars(statement)).all()

    async def add(self, values: dict[str, Any]) -> User:
        return (await self._returning(insert(User).values(values).returning(User))).one()

    async def update(self, user_id: int, changes: dict[str, Any]) -> User | None:
        statement = update(User).where(User.id == user_id).values(changes).returning(User)
        return (await self._returning(statement)).one_or_none()

    async def delete(self, user_id: int) -> bool:
        statement = delete(User).where(User.id == user_id).returning(User.id)
        try:
            deleted = await self.session.scalar(statement)
        except IntegrityError as exc:
            if violated_constraint(exc) == "fk_devices_owner_id_users":
                raise UserHasDevices from None
            raise
        return deleted is not None

    async def _returning(self, statement: Executable) -> ScalarResult[User]:
        try:
            return await self.session.scalars(
                statement, execution_options={"populate_existing": True}
            )
        except IntegrityError as exc:
            if violated_constraint(exc) == "uq_users_email_lower":
                raise EmailAlreadyRegistered from None
            raise
