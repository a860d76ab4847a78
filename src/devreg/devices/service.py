"""Device use cases. Services never commit: the caller's session scope does."""

from sqlalchemy.ext.asyncio import AsyncSession

from devreg.conditional import IfMatch
from devreg.devices.filters import NULLABLE_SORT_KEYS, SORT_KEYS, DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from devreg.errors import DeviceNotFound, PreconditionFailed
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
    session: AsyncSession, device_id: int, *, data: DeviceCreate, if_match: IfMatch | None = None
) -> DeviceRead:
    return await _apply(session, device_id, data.model_dump(), if_match)


async def update_device(
    session: AsyncSession, device_id: int, *, data: DeviceUpdate, if_match: IfMatch | None = None
) -> DeviceRead:
    changes = data.changes()
    if not changes:
        device = await get_device(session, device_id)
        if if_match is not None and not if_match.accepts(device.version):
            raise PreconditionFailed(device.version)
        return device
    return await _apply(session, device_id, changes, if_match)


async def delete_device(
    session: AsyncSession, device_id: int, *, if_match: IfMatch | None = None
) -> None:
    repository = DeviceRepository(session)
    if not await repository.delete(device_id, versions=_versions(if_match)):
        raise await _not_written(repository, device_id, if_match)


async def record_heartbeat(session: AsyncSession, device_id: int) -> None:
    """The device was seen now: one UPDATE, nothing read back."""
    if not await DeviceRepository(session).touch_last_seen(device_id):
        raise DeviceNotFound


async def delete_devices_of_owner(session: AsyncSession, *, owner_id: int) -> None:
    await DeviceRepository(session).delete_by_owner(owner_id)


async def _apply(
    session: AsyncSession, device_id: int, changes: dict[str, object], if_match: IfMatch | None
) -> DeviceRead:
    repository = DeviceRepository(session)
    device = await repository.update(device_id, changes, versions=_versions(if_match))
    if device is None:
        raise await _not_written(repository, device_id, if_match)
    return device


def _versions(if_match: IfMatch | None) -> frozenset[int] | None:
    """The versions a write may apply to; None for any. The database checks them, in the
    write's own statement, so two writers can never both pass the same If-Match."""
    return if_match.versions if if_match is not None else None


async def _not_written(
    repository: DeviceRepository, device_id: int, if_match: IfMatch | None
) -> Exception:
    """Why a guarded write found no row: the device is gone, or at another version."""
    current = None if _versions(if_match) is None else await repository.current_version(device_id)
    return DeviceNotFound() if current is None else PreconditionFailed(current)
