"""Device use cases. Services never commit: the caller's session scope does."""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from devreg.auth.principal import Principal
from devreg.changes.actor import actor_of
from devreg.conditional import IfMatch, Preconditions, changed_since, not_modified
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices.filters import DeviceFilter
from devreg.devices.repository import DeviceRepository, RenderedDevice
from devreg.devices.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from devreg.errors import (
    DeviceNotFound,
    Forbidden,
    InvalidToken,
    PreconditionFailed,
    UnknownOwner,
    changed_after,
)
from devreg.pagination import PageRequest, PageResult, paginate_listing

T = TypeVar("T")


def _owner_for(owner: int, owner_id: int | None) -> int:
    """The owner a write by a token of the user `owner` (not an admin's, which may give a
    device to anyone) may give a device: its own user (also when none is named), never
    another."""
    if owner_id is not None and owner_id != owner:
        raise Forbidden("A token may only give devices to its own user; admins may assign any.")
    return owner


def with_permitted_owner(principal: Principal, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the owner the principal may give (when they name one, or must)."""
    owner = principal.owner
    if owner is None or "owner_id" not in values:
        return values
    return {**values, "owner_id": _owner_for(owner, values.get("owner_id"))}


def with_permitted_owner_change(principal: Principal, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` (only the fields sent) with the owner the principal may set: an owner cleared
    is a device given away, which only an admin may do."""
    if principal.owner is not None and "owner_id" in changes and changes["owner_id"] is None:
        raise Forbidden("A token may not leave its user's device without an owner; admins may.")
    return with_permitted_owner(principal, changes)


def refuse_if_owner_gone(owner: int | None) -> None:
    """For a write whose owner was not found: a device a plain token (of the user `owner`)
    writes is its user's, and that user gone (deleted elsewhere, the token trusted from this
    worker's cache for AUTH_CACHE_TTL), the token went with it: 401, not an owner_id the
    request never sent."""
    if owner is not None:
        raise InvalidToken


async def register_device(
    work: UnitOfWork, *, data: DeviceCreate, principal: Principal
) -> DeviceRead:
    values = with_permitted_owner(principal, data.model_dump())
    try:
        return await DeviceRepository(work).add(values, actor=actor_of(principal))
    except UnknownOwner:
        refuse_if_owner_gone(principal.owner)
        raise


async def get_device(
    work: UnitOfWork,
    device_id: int,
    *,
    principal: Principal,
    conditions: Preconditions | None = None,
) -> DeviceRead:
    """Another user's device is not found, as if it did not exist: ids do not leak. 412 unless
    the device is at a version If-Match names, or if it changed after If-Unmodified-Since (a
    read's If-None-Match is its route's: a 304)."""
    found = await DeviceRepository(work).get_by_id(device_id, owner=principal.owner)
    return _readable(found, conditions)


async def get_device_json(
    work: UnitOfWork,
    device_id: int,
    *,
    principal: Principal,
    conditions: Preconditions | None = None,
) -> RenderedDevice:
    """The device as get_device finds it, as its JSON."""
    found = await DeviceRepository(work).get_json_by_id(device_id, owner=principal.owner)
    return _readable(found, conditions)


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def updated_at(self) -> datetime: ...


VersionedT = TypeVar("VersionedT", bound=_Versioned)


def _readable(device: VersionedT | None, conditions: Preconditions | None) -> VersionedT:
    if device is None:
        raise DeviceNotFound
    if conditions is not None:
        _require_match(conditions.if_match, device.version)
        _require_unchanged(conditions.unmodified_since, device.version, device.updated_at)
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
    condition: Preconditions | None = None,
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
    condition: Preconditions | None = None,
    principal: Principal,
) -> DeviceRead:
    changes = data.changes()
    if not changes:
        device = await get_device(work, device_id, principal=principal, conditions=condition)
        if condition is not None:
            _require_none_match(condition.if_none_match, device.version)
        return device
    return await _apply(
        work, device_id, with_permitted_owner_change(principal, changes), condition, principal
    )


async def delete_device(
    work: UnitOfWork,
    device_id: int,
    *,
    condition: Preconditions | None = None,
    principal: Principal,
) -> None:
    repository = DeviceRepository(work)
    owner, actor = principal.owner, actor_of(principal)

    async def delete(versions: frozenset[int] | None, not_versions: frozenset[int]) -> bool | None:
        deleted = await repository.delete(
            device_id, actor=actor, owner=owner, versions=versions, not_versions=not_versions
        )
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
    condition: Preconditions | None,
    principal: Principal,
) -> DeviceRead:
    repository = DeviceRepository(work)
    owner, actor = principal.owner, actor_of(principal)

    async def update(
        versions: frozenset[int] | None, not_versions: frozenset[int]
    ) -> DeviceRead | None:
        return await repository.update(
            device_id,
            changes,
            actor=actor,
            owner=owner,
            versions=versions,
            not_versions=not_versions,
        )

    return await _write_guarded(repository, device_id, condition, owner, update)


async def _write_guarded(
    repository: DeviceRepository,
    device_id: int,
    condition: Preconditions | None,
    owner: int | None,
    write: Callable[[frozenset[int] | None, frozenset[int]], Awaitable[T | None]],
) -> T:
    """What `write` returns, given the versions it may apply to (If-Match; None for any) and
    those it may not (If-None-Match): the database checks both in the write's own statement, so
    two writers never both pass the same If-Match, and no write lands on a version If-None-Match
    names, whatever other writes do meanwhile. If it finds no row (None), why (_refusal)."""
    if condition is None:
        written = await write(None, frozenset())
    elif condition.refuses_any_version:
        written = None
    elif condition.unmodified_since is not None:
        version = await _version_unchanged_since(
            repository, device_id, owner, condition.unmodified_since
        )
        written = await write(frozenset({version}), condition.refused_versions)
    else:
        written = await write(condition.accepted_versions, condition.refused_versions)
    if written is not None:
        return written
    raise await _refusal(repository, device_id, condition, owner)


async def _version_unchanged_since(
    repository: DeviceRepository, device_id: int, owner: int | None, since: datetime
) -> int:
    """The device's version, if it has not changed since `since` (If-Unmodified-Since): the
    write then applies to that version alone, so a change made meanwhile refuses it as a stale
    If-Match would be."""
    last = await repository.last_change(device_id, owner=owner)
    if last is None:
        raise DeviceNotFound
    version, updated_at = last
    _require_unchanged(since, version, updated_at)
    return version


def _judge(condition: Preconditions, version: int) -> None:
    """412 unless a write to this version meets the condition."""
    _require_match(condition.if_match, version)
    _require_none_match(condition.if_none_match, version)


async def _refusal(
    repository: DeviceRepository,
    device_id: int,
    condition: Preconditions | None,
    owner: int | None,
) -> Exception:
    """Why a write did not apply: the device is gone (or not the owner's), or its version, when
    the write's statement ran, did not meet the condition."""
    if condition is None:
        return DeviceNotFound()
    current = await repository.current_version(device_id, owner=owner)
    if current is None:
        return DeviceNotFound()
    try:
        _judge(condition, current)
    except PreconditionFailed as refusal:
        return refusal
    # Another write moved the device on after this one's statement found it at a version the
    # condition refused.
    return PreconditionFailed(
        current,
        f"The device changed while this write was made; it is now at version {current} "
        f'(ETag "{current}").',
    )


def _require_match(if_match: IfMatch | None, version: int) -> None:
    if if_match is not None and not if_match.accepts(version):
        raise PreconditionFailed(version)


def _require_none_match(if_none_match: str | None, version: int) -> None:
    if not_modified(if_none_match, version):
        raise PreconditionFailed(
            version, f"If-None-Match matches the device's current version, {version}."
        )


def _require_unchanged(since: datetime | None, version: int, updated_at: datetime) -> None:
    if since is not None and changed_since(updated_at, since):
        raise PreconditionFailed(
            version,
            f'{changed_after("device", updated_at)} It is at version {version} (ETag "{version}").',
        )
