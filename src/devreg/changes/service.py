"""Change-log use cases. Services never commit: the caller's session scope does."""

from dataclasses import replace
from datetime import timedelta

from devreg.auth.principal import Principal
from devreg.changes.actor import actor_of
from devreg.changes.filters import ChangeFilter
from devreg.changes.models import ObjectType
from devreg.changes.repository import ChangeRepository
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices import service as devices
from devreg.errors import DeviceNotFound
from devreg.pagination import PageRequest, PageResult, paginate_listing


async def list_changes(
    work: UnitOfWork, *, filters: ChangeFilter, page: PageRequest, principal: Principal
) -> PageResult[Rendered]:
    """Every change for an admin; for any other token, the history of its user's devices from
    the user's time with each, and of the user's own record."""
    return await _page(work, principal.restrict(filters), page)


async def _page(work: UnitOfWork, filters: ChangeFilter, page: PageRequest) -> PageResult[Rendered]:
    return await paginate_listing("changes", ChangeRepository(work), filters, page)


async def list_device_changes(
    work: UnitOfWork,
    device_id: int,
    *,
    filters: ChangeFilter,
    page: PageRequest,
    principal: Principal,
) -> PageResult[Rendered]:
    """A device's history, whoever made it, also after the device was deleted: a 404 for a
    device that neither exists nor has any. Any token but an admin's reads the records of its
    user's time with the device (as `list_changes`): a 404 for a device its user neither owns
    nor ever had."""
    if not await _known_to(work, device_id, owner=principal.owner):
        raise DeviceNotFound()
    device = replace(filters, object_type=(ObjectType.DEVICE,), object_id=(device_id,))
    return await _page(work, principal.restrict(device), page)


async def _known_to(work: UnitOfWork, device_id: int, *, owner: int | None) -> bool:
    """Whether the user `owner` (None: an admin, anyone) owns the device or has any of its
    history (its time with it ended)."""
    if await devices.device_exists(work, device_id, owner=owner):
        return True
    visible = ChangeFilter(
        object_type=(ObjectType.DEVICE,), object_id=(device_id,), visible_to=owner
    )
    return await ChangeRepository(work).any_match(visible)


async def record_actor(work: UnitOfWork, principal: Principal) -> None:
    """Name the principal as the actor of every write in the session's transaction (which this
    begins): for writes whose statements do not name it themselves (changes.actor.ACTING)."""
    await ChangeRepository(work).name_actor(actor_of(principal))


async def without_change_log(work: UnitOfWork) -> None:
    """Record nothing for the rest of the session's transaction (synthetic data)."""
    await ChangeRepository(work).stop_recording()


async def prune_changes(work: UnitOfWork, *, older_than: timedelta) -> int:
    """Delete the records older than `older_than`; how many went."""
    return await ChangeRepository(work).delete_older_than(older_than)
