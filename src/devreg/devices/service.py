"""Device use cases. Services never commit: the caller's session scope does."""

from dataclasses import replace
from typing import Any

from devreg.auth.principal import Principal
from devreg.changes.actor import actor_of
from devreg.conditional import IfMatch
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices.filters import NULLABLE_SORT_KEYS, SORT_KEYS, DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from devreg.errors import DeviceNotFound, Forbidden, PreconditionFailed
from devreg.pagination import PageRequest, PageResult, paginate_listing


def _owner_for(principal: Principal, owner_id: int | None) -> int | None:
    """The owner a write may give a device: anyone for an admin; for other tokens their own
    user (also when none is named), never another."""
    if principal.owner is None:
        return owner_id
    if owner_id is not None and owner_id != principal.owner:
        raise Forbidden("A token may only give devices to its own user; admins may assign any.")
    return principal.owner


def with_permitted_owner(principal: Principal, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the owner the principal may give (when they name one, or must)."""
    if principal.owner is None or "owner_id" not in values:
        return values
    return {**values, "owner_id": _owner_for(principal, values.get("owner_id"))}


def with_permitted_owner_change(principal: Principal, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` (only the fields sent) with the owner the principal may set: an owner cleared
    is a device given away, which only an admin may do."""
    if principal.owner is not None and "owner_id" in changes and changes["owner_id"] is None:
        raise Forbidden("A token may not leave its user's device without an owner; admins may.")
    return with_permitted_owner(principal, changes)


def visible(principal: Principal, filters: DeviceFilter) -> DeviceFilter:
    return filters if principal.owner is None else replace(filters, visible_to=principal.owner)


async def register_device(
    work: UnitOfWork, *, data: DeviceCreate, principal: Principal
) -> DeviceRead:
    values = with_permitted_owner(principal, data.model_dump())
    return await DeviceRepository(work).add(values, actor=actor_of(principal))


async def get_device(work: UnitOfWork, device_id: int, *, principal: Principal) -> DeviceRead:
    """Another user's device is not found, as if it did not exist: ids do not leak."""
    device = await DeviceRepository(work).get_by_id(device_id, owner=principal.owner)
    if device is None:
        raise DeviceNotFound
    return device


async def list_devices(
    work: UnitOfWork,
    *,
    filters: DeviceFilter,
    page: PageRequest,
    principal: Principal,
) -> PageResult[Rendered]:
    sort_key = page.sort.key
    return await paginate_listing(
        "devices",
        DeviceRepository(work),
        visible(principal, filters),
        page,
        value_type=SORT_KEYS.get(sort_key, float),
        nullable=sort_key in NULLABLE_SORT_KEYS,
    )


async def replace_device(
    work: UnitOfWork,
    device_id: int,
    *,
    data: DeviceCreate,
    if_match: IfMatch | None = None,
    principal: Principal,
) -> DeviceRead:
    return await _apply(
        work, device_id, with_permitted_owner(principal, data.model_dump()), if_match, principal
    )


async def update_device(
    work: UnitOfWork,
    device_id: int,
    *,
    data: DeviceUpdate,
    if_match: IfMatch | None = None,
    principal: Principal,
) -> DeviceRead:
    changes = data.changes()
    if not changes:
        device = await get_device(work, device_id, principal=principal)
        if if_match is not None and not if_match.accepts(device.version):
            raise PreconditionFailed(device.version)
        return device
    return await _apply(
        work, device_id, with_permitted_owner_change(principal, changes), if_match, principal
    )


async def delete_device(
    work: UnitOfWork,
    device_id: int,
    *,
    if_match: IfMatch | None = None,
    principal: Principal,
) -> None:
    repository = DeviceRepository(work)
    owner = principal.owner
    deleted = await repository.delete(
        device_id, actor=actor_of(principal), owner=owner, versions=_versions(if_match)
    )
    if not deleted:
        raise await _not_written(repository, device_id, if_match, owner)


async def record_heartbeat(work: UnitOfWork, device_id: int, *, principal: Principal) -> None:
    """The device was seen now: one UPDATE, nothing read back."""
    if not await DeviceRepository(work).touch_last_seen(device_id, owner=principal.owner):
        raise DeviceNotFound


async def delete_devices_of_owner(work: UnitOfWork, *, owner_id: int) -> None:
    """Part of deleting the user, in its transaction (which names the actor)."""
    await DeviceRepository(work).delete_by_owner(owner_id)


async def _apply(
    work: UnitOfWork,
    device_id: int,
    changes: dict[str, Any],
    if_match: IfMatch | None,
    principal: Principal,
) -> DeviceRead:
    repository = DeviceRepository(work)
    owner = principal.owner
    device = await repository.update(
        device_id, changes, actor=actor_of(principal), owner=owner, versions=_versions(if_match)
    )
    if device is None:
        raise await _not_written(repository, device_id, if_match, owner)
    return device


def _versions(if_match: IfMatch | None) -> frozenset[int] | None:
    """The versions a write may apply to; None for any. The database checks them, in the
    write's own statement, so two writers can never both pass the same If-Match."""
    return if_match.versions if if_match is not None else None


async def _not_written(
    repository: DeviceRepository, device_id: int, if_match: IfMatch | None, owner: int | None
) -> Exception:
    """Why a guarded write found no row: the device is gone (or not the owner's), or at
    another version."""
    if _versions(if_match) is None:
        return DeviceNotFound()
    current = await repository.current_version(device_id, owner=owner)
    return DeviceNotFound() if current is None else PreconditionFailed(current)
