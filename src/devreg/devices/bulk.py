"""Bulk use cases: many devices in one request, all or nothing, a statement or two of SQL."""

from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from devreg.auth.principal import Principal
from devreg.changes.actor import actor_of
from devreg.db.session import UnitOfWork
from devreg.devices.repository import DeviceRepository
from devreg.devices.schemas import DeviceBulkUpdate, DeviceCreate
from devreg.devices.service import (
    refuse_if_owner_gone,
    with_permitted_owner,
    with_permitted_owner_change,
)
from devreg.errors import InvalidItems, SerialAlreadyRegistered, UnguardedBulkWrite, UnknownOwner


async def register_devices(
    work: UnitOfWork, *, items: Sequence[DeviceCreate], principal: Principal
) -> list[int]:
    """The new devices' ids, in the order of `items`."""
    _refuse_repeats([item.serial_number for item in items], "serial_number", "serial_number")
    rows = [with_permitted_owner(principal, item.model_dump(mode="json")) for item in items]
    repository = DeviceRepository(work)
    async with _refusals_located(work, repository, rows, principal.owner):
        return await repository.add_many(rows, actor=actor_of(principal))


async def update_devices(
    work: UnitOfWork,
    *,
    items: Sequence[DeviceBulkUpdate],
    principal: Principal,
    require_if_match: bool = False,
) -> list[int]:
    """Refused with `require_if_match`: a bulk write names no versions."""
    _refuse_unguarded(require_if_match)
    ids = [item.id for item in items]
    _refuse_repeats(ids, "id", "id")
    _refuse_repeats([item.serial_number for item in items], "serial_number", "serial_number")
    changes = [
        with_permitted_owner_change(principal, item.model_dump(mode="json", exclude_unset=True))
        for item in items
    ]
    repository = DeviceRepository(work)
    async with _refusals_located(work, repository, changes, principal.owner):
        updated = await repository.update_many(
            changes, actor=actor_of(principal), owner=principal.owner
        )
    if len(updated) < len(ids):
        # An unknown owner for a device not found broke no constraint, and is named first.
        await _refuse_unknown_owners(repository, changes)
        _refuse_missing(ids, found=updated, located_at="id")
    return ids


async def delete_devices(
    work: UnitOfWork, *, ids: Sequence[int], principal: Principal, require_if_match: bool = False
) -> None:
    """Refused with `require_if_match`: a bulk write names no versions."""
    _refuse_unguarded(require_if_match)
    _refuse_repeats(ids, "id", None)  # the items are the ids
    repository = DeviceRepository(work)
    deleted = await repository.delete_many(
        list(ids), actor=actor_of(principal), owner=principal.owner
    )
    _refuse_missing(ids, found=deleted, located_at=None)


@asynccontextmanager
async def _refusals_located(
    work: UnitOfWork,
    repository: DeviceRepository,
    rows: Sequence[dict[str, Any]],
    owner: int | None,
) -> AsyncIterator[None]:
    """Run the bulk write in a savepoint; if an owner_id names no user, or a serial number is
    registered to another device, say which items."""
    try:
        async with work.begin_nested():
            yield
    except UnknownOwner:
        refuse_if_owner_gone(owner)
        await _refuse_unknown_owners(repository, rows)
        raise
    except SerialAlreadyRegistered:
        await _refuse_registered_serials(repository, rows, owner)
        raise


async def _refuse_unknown_owners(
    repository: DeviceRepository, rows: Sequence[dict[str, Any]]
) -> None:
    """Each item whose owner_id names no user: a 422 item."""
    unknown = await repository.unknown_owners(
        row["owner_id"] for row in rows if row.get("owner_id") is not None
    )
    if unknown:
        raise InvalidItems(
            {
                index: ("owner_id", UnknownOwner.default_detail)
                for index, row in enumerate(rows)
                if row.get("owner_id") in unknown
            }
        ) from None


async def _refuse_registered_serials(
    repository: DeviceRepository, rows: Sequence[dict[str, Any]], owner: int | None
) -> None:
    """Each item whose serial_number another device has (not the item's own: a bulk update may
    name a device's serial number unchanged; any device not `owner`'s counts as another, so
    that an item naming one's id learns nothing of it): a 409 item."""
    holders = await repository.serial_holders(
        (row["serial_number"] for row in rows if row.get("serial_number") is not None),
        owner=owner,
    )
    taken = []
    for index, row in enumerate(rows):
        serial_number = row.get("serial_number")
        if serial_number in holders:
            holder = holders[serial_number]
            if holder is None or holder != row.get("id"):
                taken.append(index)
    if taken:
        raise SerialAlreadyRegistered(items=taken) from None


def _refuse_unguarded(require_if_match: bool) -> None:
    if require_if_match:
        raise UnguardedBulkWrite


def _refuse_repeats(values: Sequence[Hashable | None], what: str, located_at: str | None) -> None:
    """Each item whose `what` (the items' `values` of it) an earlier item has: a 422 item,
    located at the item's field `located_at` (None: the item itself, as a bulk delete's id)."""
    reason = f"{what} appears more than once in this request"
    seen: set[Hashable] = set()
    problems: dict[int, tuple[str | None, str]] = {}
    for index, value in enumerate(values):
        if value is None:
            continue
        if value in seen:
            problems[index] = (located_at, reason)
        seen.add(value)
    if problems:
        raise InvalidItems(problems)


def _refuse_missing(ids: Sequence[int], *, found: Sequence[int], located_at: str | None) -> None:
    """Each id not found: a 422 item, located at `located_at` in it (None: the item itself, as
    a bulk delete's id is). Raising here rolls back what the statement already changed: all or
    nothing."""
    known = set(found)
    problems: dict[int, tuple[str | None, str]] = {
        index: (located_at, "Device not found") for index, id_ in enumerate(ids) if id_ not in known
    }
    if problems:
        raise InvalidItems(problems)
