"""User use cases. Services never commit: the caller's session scope does."""

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession

from devreg.devices import service as devices_service
from devreg.devices.filters import DeviceFilter
from devreg.devices.schemas import DeviceRead
from devreg.errors import UserNotFound
from devreg.pagination import Cursors, PageRequest, PageResult, describe_filters, paginate
from devreg.users.filters import SORT_KEYS, UserFilter
from devreg.users.models import User
from devreg.users.repository import UserRepository
from devreg.users.schemas import UserCreate, UserUpdate


async def register_user(session: AsyncSession, *, data: UserCreate) -> User:
    return await UserRepository(session).add(data.model_dump())


async def get_user(session: AsyncSession, user_id: int) -> User:
    user = await UserRepository(session).get_by_id(user_id)
    if user is None:
        raise UserNotFound
    return user


async def list_users(
    session: AsyncSession, *, filters: UserFilter, page: PageRequest
) -> PageResult[User]:
    repository = UserRepository(session)
    sort = page.sort
    return await paginate(
        page,
        Cursors("users", sort, describe_filters(filters), value_type=SORT_KEYS[sort.key]),
        fetch=lambda after: repository.list_page(filters, sort=sort, after=after, limit=page.limit),
        count=lambda exact: repository.count(filters, exact=exact),
        id_of=lambda user: user.id,
    )


async def update_user(session: AsyncSession, user_id: int, *, data: UserUpdate) -> User:
    changes = data.changes()
    if not changes:
        return await get_user(session, user_id)
    user = await UserRepository(session).update(user_id, changes)
    if user is None:
        raise UserNotFound
    return user


async def delete_user(session: AsyncSession, user_id: int, *, cascade_devices: bool) -> None:
    """Refused with UserHasDevices while the user owns devices, unless they go with the user."""
    if cascade_devices:
        await devices_service.delete_devices_of_owner(session, owner_id=user_id)
    if not await UserRepository(session).delete(user_id):
        raise UserNotFound


async def list_user_devices(
    session: AsyncSession, user_id: int, *, filters: DeviceFilter, page: PageRequest
) -> PageResult[DeviceRead]:
    await get_user(session, user_id)
    owned = replace(filters, owner_id=(user_id,))
    return await devices_service.list_devices(session, filters=owned, page=page)
