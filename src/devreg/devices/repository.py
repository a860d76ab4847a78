from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, ScalarResult, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from devreg.db.constraints import violated_constraint
from devreg.devices.models import Device
from devreg.errors import SerialAlreadyRegistered, UnknownOwner
from devreg.users.models import User

_VIOLATIONS = {
    "uq_devices_serial_number": SerialAlreadyRegistered,
    "fk_devices_owner_id_users": UnknownOwner,
}


class DeviceRepository:
    """Every device it returns has `owner` loaded: one join for reads, one lookup after a write."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, device_id: int) -> Device | None:
        statement = select(Device).options(joinedload(Device.owner)).where(Device.id == device_id)
        return (await self.session.scalars(statement)).one_or_none()

    async def list_page(
        self, *, owner_id: int | None = None, after_id: int, limit: int
    ) -> Sequence[Device]:
        """Up to `limit` + 1 devices after `after_id`, by id: the extra row says more exist."""
        statement = (
            select(Device)
            .options(joinedload(Device.owner))
            .where(Device.id > after_id)
            .order_by(Device.id)
            .limit(limit + 1)
        )
        if owner_id is not None:
            statement = statement.where(Device.owner_id == owner_id)
        return (await self.session.scalars(statement)).all()

    async def add(self, values: dict[str, Any]) -> Device:
        device = (await self._returning(insert(Device).values(values).returning(Device))).one()
        return await self._with_owner(device)

    async def update(self, device_id: int, changes: dict[str, Any]) -> Device | None:
        statement = update(Device).where(Device.id == device_id).values(changes).returning(Device)
        device = (await self._returning(statement)).one_or_none()
        return await self._with_owner(device) if device is not None else None

    async def delete(self, device_id: int) -> bool:
        statement = delete(Device).where(Device.id == device_id).returning(Device.id)
        return await self.session.scalar(statement) is not None

    async def delete_by_owner(self, owner_id: int) -> None:
        await self.session.execute(delete(Device).where(Device.owner_id == owner_id))

    async def _returning(self, statement: Executable) -> ScalarResult[Device]:
        try:
            return await self.session.scalars(
                statement, execution_options={"populate_existing": True}
            )
        except IntegrityError as exc:
            violation = _VIOLATIONS.get(violated_constraint(exc) or "")
            if violation is not None:
                raise violation from None
            raise

    async def _with_owner(self, device: Device) -> Device:
        owner = await self.session.get(User, device.owner_id) if device.owner_id else None
        set_committed_value(device, "owner", owner)
        return device
