"""Device use cases. Services never commit: the caller's session scope does."""

from sqlalchemy.ext.asyncio import AsyncSession

from devreg.devices.filters import NULLABLE_SORT_KEYS, SORT_KEYS, DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from devreg.errors import DeviceNotFound
from devreg.pagination import Cursors, PageRequest, PageResult, describe_filters, paginate


async def register_device(session: AsyncSession, *, data: DeviceCreate) -> DeviceRead:
    return await DeviceRepository(session).add(data.model_dump())


async def get_device(session: AsyncSession, device_id: int) -> DeviceRead:
    device = await DeviceRepository(session).get_by_id(device_id)
    if device is None:
        raise DeviceNotFound
    return device


async def list_devices(
    session: AsyncSession, *, filters: DeviceFilter, page: PageRequest
) -> PageResult[DeviceRead]:
    repository = DeviceRepository(session)
    sort = page.sort
    return await paginate(
        page,
        Cursors(
            "devices",
            sort,
            describe_filters(filters),
            value_type=SORT_KEYS.get(sort.key, float),
            nullable=sort.key in NULLABLE_SORT_KEYS,
        ),
        fetch=lambda after: repository.list_page(filters, sort=sort, after=after, limit=page.limit),
        count=lambda exact: repository.count(filters, exact=exact),
        id_of=lambda device: device.id,
    )


async def replace_device(
    session: AsyncSession, device_id: int, *, data: DeviceCreate
) -> DeviceRead:
    return await _apply(session, device_id, data.model_dump())


async def update_device(session: AsyncSession, device_id: int, *, data: DeviceUpdate) -> DeviceRead:
    changes = data.changes()
    if not changes:
        return await get_device(session, device_id)
    return await _apply(session, device_id, changes)


async def delete_device(session: AsyncSession, device_id: int) -> None:
    if not await DeviceRepository(session).delete(device_id):
        raise DeviceNotFound


async def record_heartbeat(session: AsyncSession, device_id: int) -> None:
    """The device was seen now: one UPDATE, nothing read back."""
    if not await DeviceRepository(session).touch_last_seen(device_id):
        raise DeviceNotFound


async def delete_devices_of_owner(session: AsyncSession, *, owner_id: int) -> None:
    await DeviceRepository(session).delete_by_owner(owner_id)


async def _apply(session: AsyncSession, device_id: int, changes: dict[str, object]) -> DeviceRead:
    device = await DeviceRepository(session).update(device_id, changes)
    if device is None:
        raise DeviceNotFound
    return device
