"""Change-log use cases. Services never commit: the caller's session scope does."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from devreg.auth.principal import Principal
from devreg.changes.filters import SORT_KEYS, ChangeFilter
from devreg.changes.models import ObjectType
from devreg.changes.repository import ChangeRepository
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices import service as devices_service
from devreg.pagination import PageRequest, PageResult, paginate_listing


async def list_changes(
    work: UnitOfWork, *, filters: ChangeFilter, page: PageRequest, principal: Principal
) -> PageResult[Rendered]:
    """Every change for an admin; for any other token, the history of its user's devices from
    the user's time with each, and of the user's own record."""
    if principal.owner is not None:
        filters = replace(filters, visible_to=principal.owner)
    return await _page(work, filters, page)


async def _page(work: UnitOfWork, filters: ChangeFilter, page: PageRequest) -> PageResult[Rendered]:
    return await paginate_listing(
        "changes", ChangeRepository(work), filters, page, value_type=SORT_KEYS[page.sort.key]
    )


async def list_device_changes(
    work: UnitOfWork,
    device_id: int,
    *,
    filters: ChangeFilter,
    page: PageRequest,
    principal: Principal,
) -> PageResult[Rendered]:
    """A device's history, whoever made it. An admin sees a deleted device's too; any other
    token only that of a device its user owns now, from the user's time with it."""
    if principal.owner is not None:
        await devices_service.get_device(work, device_id, principal=principal)
        filters = replace(filters, visible_to=principal.owner)
    device = replace(filters, object_type=(ObjectType.DEVICE,), object_id=(device_id,))
    return await _page(work, device, page)


async def prune_changes(work: UnitOfWork, *, older_than: timedelta) -> int:
    """Delete the records older than `older_than`; how many went."""
    return await ChangeRepository(work).delete_older_than(datetime.now(UTC) - older_than)
