import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from devreg.db.base import Base, Timestamped

if TYPE_CHECKING:
    from devreg.users.models import User

NAME_MAX_LENGTH = 100
SERIAL_MAX_LENGTH = 100
MODEL_MAX_LENGTH = 100


class DeviceStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    RETIRED = "retired"


class Device(Timestamped, Base):
    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint("btrim(name) <> ''", name="name_not_blank"),
        Index("ix_devices_owner_id_id", "owner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    serial_number: Mapped[str | None] = mapped_column(String(SERIAL_MAX_LENGTH), unique=True)
    model: Mapped[str | None] = mapped_column(String(MODEL_MAX_LENGTH))
    status: Mapped[DeviceStatus] = mapped_column(
        Enum(
            DeviceStatus,
            name="status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda statuses: [status.value for status in statuses],
        ),
        server_default=DeviceStatus.ACTIVE.value,
    )
    owner_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="RESTRICT")
    )
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by a trigger on every UPDATE, whichever code path issues it.
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))

    owner: Mapped["User | None"] = relationship(lazy="raise")
