"""Device use cases. Services never commit: the caller's session scope does."""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from devreg.auth.principal import Principal
from devreg.changes.actor import actor_of
from devreg.conditional import IfMatch, WriteCondition, not_modified
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices.filters import DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from devreg.errors import DeviceNotFound, Forbidden, PreconditionFailed
from devreg.pagination import PageRequest, PageResult, paginate_listing

T = TypeVar("T")


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


async def register_device(
    work: UnitOfWork, *, data: DeviceCreate, principal: Principal
) -> DeviceRead:
    values = with_permitted_owner(principal, data.model_dump())
    return await DeviceRepository(work).add(values, actor=actor_of(principal))


async def get_device(
    work: UnitOfWork, device_id: int, *, principal: Principal, if_match: IfMatch | None = None
) -> DeviceRead:
    """Another user's device is not found, as if it did not exist: ids do not leak. With
    `if_match`, 412 unless the device is at one of its versions."""
    device = await DeviceRepository(work).get_by_id(device_id, owner=principal.owner)
    if device is None:
        raise DeviceNotFound
    _require_match(if_match, device.version)
    return device


async def device_exists(work: UnitOfWork, device_id: int, *, owner: int | None) -> bool:
    """Whether the device exists (and is `owner`'s, when given)."""
    return await DeviceRepository(work).current_version(device_id, owner=owner) is not None


async def list_devices(
    work: UnitOfWork,
    *,
    filters: DeviceFilter,
    page: PageRequest,
    principal: Principal,
) -> PageResult[Rendered]:
    return await paginate_listing(
        "devices", DeviceRepository(work), principal.restrict(filters), page
    )


async def replace_device(
    work: UnitOfWork,
    device_id: int,
    *,
    data: DeviceCreate,
    condition: WriteCondition | None = None,
    principal: Principal,
) -> DeviceRead:
    return await _apply(
        work, device_id, with_permitted_owner(principal, data.model_dump()), condition, principal
    )


async def update_device(
    work: UnitOfWork,
    device_id: int,
    *,
    data: DeviceUpdate,
    condition: WriteCondition | None = None,
    principal: Principal,
) -> DeviceRead:
    changes = data.changes()
    if not changes:
        device = await get_device(work, device_id, principal=principal)
        if condition is not None:
            _judge(condition, device.version)
        return device
    return await _apply(
        work, device_id, with_permitted_owner_change(principal, changes), condition, principal
    )


async def delete_device(
    work: UnitOfWork,
    device_id: int,
    *,
    condition: WriteCondition | None = None,
    principal: Principal,
) -> None:
    repository = DeviceRepository(work)
    owner, actor = principal.owner, actor_of(principal)

    async def delete(versions: frozenset[int] | None) -> bool | None:
        deleted = await repository.delete(device_id, actor=actor, owner=owner, versions=versions)
        return deleted or None

    await _write_guarded(repository, device_id, condition, owner, delete)


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
    condition: WriteCondition | None,
    principal: Principal,
) -> DeviceRead:
    repository = DeviceRepository(work)
    owner, actor = principal.owner, actor_of(principal)

    async def update(versions: frozenset[int] | None) -> DeviceRead | None:
        return await repository.update(
            device_id, changes, actor=actor, owner=owner, versions=versions
        )

    return await _write_guarded(repository, device_id, condition, owner, update)


# How often a write with If-None-Match judges its condition again when another write changed
# the device between its judgement and its own statement.
_MAX_JUDGEMENTS = 5


async def _write_guarded(
    repository: DeviceRepository,
    device_id: int,
    condition: WriteCondition | None,
    owner: int | None,
    write: Callable[[frozenset[int] | None], Awaitable[T | None]],
) -> T:
    """What `write` returns, given the versions the condition lets it apply to; if it finds no
    row (None), why (_not_written). A write with If-None-Match is guarded by the version it
    judged: if another write moved the device on meanwhile, the condition is judged again at
    the new version (a tag that matched neither version must not turn into a 412)."""
    judged_again = condition is not None and condition.if_none_match is not None
    for _ in range(_MAX_JUDGEMENTS):
        versions = await _writable_versions(repository, device_id, condition, owner)
        written = await write(versions)
        if written is not None:
            return written
        refusal = await _not_written(repository, device_id, versions, owner)
        if not (judged_again and isinstance(refusal, PreconditionFailed)):
            break
    raise refusal


async def _writable_versions(
    repository: DeviceRepository,
    device_id: int,
    condition: WriteCondition | None,
    owner: int | None,
) -> frozenset[int] | None:
    """The versions a write may apply to; None for any. The database checks them, in the
    write's own statement, so two writers can never both pass the same If-Match. If-None-Match
    names the versions a write may not apply to, which is rare: the current version is read and
    judged, and the write then guarded by it (`_write_guarded` has it judged again after a change
    between)."""
    if condition is None:
        return None
    if condition.if_none_match is None:
        return condition.if_match.versions if condition.if_match is not None else None
    current = await repository.current_version(device_id, owner=owner)
    if current is None:
        raise DeviceNotFound
    _judge(condition, current)
    return frozenset({current})


def _judge(condition: WriteCondition, version: int) -> None:
    """412 unless a write to this version meets the condition."""
    _require_match(condition.if_match, version)
    if not_modified(condition.if_none_match, version):
        raise PreconditionFailed(
            version, f"If-None-Match matches the device's current version, {version}."
        )


async def _not_written(
    repository: DeviceRepository,
    device_id: int,
    versions: frozenset[int] | None,
    owner: int | None,
) -> Exception:
    """Why a guarded write found no row: the device is gone (or not the owner's), or at
    another version."""
    if versions is None:
        return DeviceNotFound()
    current = await repository.current_version(device_id, owner=owner)
    return DeviceNotFound() if current is None else PreconditionFailed(current)


def _require_match(if_match: IfMatch | None, version: int) -> None:
    if if_match is not None and not if_match.accepts(version):
        raise PreconditionFailed(version)
