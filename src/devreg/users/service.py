"""User use cases. Services never commit: the caller's session scope does."""

from dataclasses import replace
from datetime import datetime

from devreg.auth.authenticator import Authenticator
from devreg.auth.principal import Principal
from devreg.changes.service import record_actor
from devreg.conditional import changed_since
from devreg.db.rendering import Rendered
from devreg.db.session import UnitOfWork
from devreg.devices import service as devices_service
from devreg.devices.filters import DeviceFilter
from devreg.errors import AdminRequired, ChangedSince, UnguardedBulkWrite, UserNotFound
from devreg.pagination import PageRequest, PageResult, paginate_listing
from devreg.users.filters import UserFilter
from devreg.users.models import User
from devreg.users.repository import UserRepository
from devreg.users.schemas import UserCreate, UserUpdate


def _visible_user_id(principal: Principal, user_id: int) -> int:
    """A non-admin token sees only its own user; any other is not found."""
    if principal.owner is not None and user_id != principal.owner:
        raise UserNotFound
    return user_id


async def register_user(work: UnitOfWork, *, data: UserCreate, principal: Principal) -> User:
    principal.require_admin()
    await record_actor(work, principal)
    return await UserRepository(work).add(data.model_dump())


async def get_user(
    work: UnitOfWork, user_id: int, *, principal: Principal, unchanged_since: datetime | None = None
) -> User:
    """412 if the user changed after `unchanged_since` (If-Unmodified-Since)."""
    user = await UserRepository(work).get_by_id(_visible_user_id(principal, user_id))
    if user is None:
        raise UserNotFound
    _require_unchanged(user, unchanged_since)
    return user


def _require_unchanged(user: User, since: datetime | None) -> None:
    """412 if the user changed after `since` (If-Unmodified-Since)."""
    if since is not None and changed_since(user.updated_at, since):
        raise ChangedSince("user", user.updated_at)


async def _refusal(work: UnitOfWork, user_id: int, principal: Principal) -> Exception:
    """Why a write found no user to change: there is none (raised), or it changed after the
    time the write was guarded by."""
    user = await get_user(work, user_id, principal=principal)
    return ChangedSince("user", user.updated_at)


async def list_users(
    work: UnitOfWork, *, filters: UserFilter, page: PageRequest, principal: Principal
) -> PageResult[Rendered]:
    return await paginate_listing("users", UserRepository(work), principal.restrict(filters), page)


async def update_user(
    work: UnitOfWork,
    user_id: int,
    *,
    data: UserUpdate,
    principal: Principal,
    unchanged_since: datetime | None = None,
) -> User:
    changes = data.changes()
    if principal.owner is not None and "email" in changes:
        # The email as it is, then, and so no change: written, it would undo an admin's change
        # made since it was read.
        await _refuse_email_change(work, user_id, changes.pop("email"), principal=principal)
    if not changes:
        return await get_user(work, user_id, principal=principal, unchanged_since=unchanged_since)
    await record_actor(work, principal)
    user = await UserRepository(work).update(
        _visible_user_id(principal, user_id), changes, unchanged_since=unchanged_since
    )
    if user is None:
        raise await _refusal(work, user_id, principal)
    return user


async def _refuse_email_change(
    work: UnitOfWork, user_id: int, email: str | None, *, principal: Principal
) -> None:
    """A non-admin token keeps its user's email as it is: were it free to change it, each 409
    "already registered" would tell it whether another user has that address (an address only
    PostgreSQL's lower() finds equal to the user's own, say)."""
    if email != (await get_user(work, user_id, principal=principal)).email:
        raise AdminRequired("Only an admin token may change a user's email.")


async def delete_user(
    work: UnitOfWork,
    user_id: int,
    *,
    cascade_devices: bool,
    principal: Principal,
    authenticator: Authenticator | None = None,
    require_if_match: bool = False,
    unchanged_since: datetime | None = None,
) -> None:
    """Refused with UserHasDevices while the user owns devices, unless they go with the user
    (not with `require_if_match`: they would go without their versions named). Only an admin
    deletes users. The user's tokens go with the user, from `authenticator`'s cache too."""
    principal.require_admin()
    if cascade_devices and require_if_match:
        raise UnguardedBulkWrite
    await record_actor(work, principal)
    users = UserRepository(work)
    if cascade_devices:
        # Another deletion of the user, held against first, would hold the user and then wait
        # for the devices this one deletes, while this one waits for the user: a deadlock.
        held = await users.hold_against_deletion(user_id)
        if held is None:
            raise UserNotFound
        # Judged before the devices go too, or every one would be deleted only to be restored.
        _require_unchanged(held, unchanged_since)
        await devices_service.delete_devices_of_owner(work, owner_id=user_id)
        # Then the user is held and its devices deleted again: one registered for the user
        # meanwhile would otherwise refuse the deletion. Held only after the first pass, the
        # user is seldom held while waiting for a device that a writer waiting for the user
        # holds (a deadlock, answered with a 409 to send again).
        if not await users.lock(user_id):
            raise UserNotFound
        await devices_service.delete_devices_of_owner(work, owner_id=user_id)
    if not await users.delete(user_id, unchanged_since=unchanged_since):
        raise await _refusal(work, user_id, principal)
    if authenticator is not None:
        authenticator.forget_user(user_id)


async def list_user_devices(
    work: UnitOfWork,
    user_id: int,
    *,
    filters: DeviceFilter,
    page: PageRequest,
    principal: Principal,
) -> PageResult[Rendered]:
    await get_user(work, user_id, principal=principal)
    owned = replace(filters, owner_id=(user_id,))
    if filters.owner_id and user_id not in filters.owner_id:
        # Filters combine with AND: the user's devices owned by other users are none.
        owned = replace(owned, has_owner=False)
    return await devices_service.list_devices(work, filters=owned, page=page, principal=principal)
