import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
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
from sqlalchemy.orm import Mapped, mapped_column

from devreg.db.base import Base, Timestamped

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
        # Every filter and sort is served by an index; each keyset index ends with `id`.
        Index("ix_devices_owner_id_id", "owner_id", "id"),
        Index("ix_devices_name_id", "name", "id"),
        Index("ix_devices_model_id", "model", "id"),
        Index("ix_devices_status_id", "status", "id"),
        Index("ix_devices_created_at_id", "created_at", "id"),
        Index("ix_devices_last_seen_at_id", "last_seen_at", "id"),
        # A listing of one owner's devices (every listing of a non-admin's) reads one of
        # these in its sort's order, from the owner's first device (db.keyset.pinned).
        Index("ix_devices_owner_id_name_id", "owner_id", "name", "id"),
        Index("ix_devices_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_devices_owner_id_last_seen_at_id", "owner_id", "last_seen_at", "id"),
        Index("ix_devices_tags", "tags", postgresql_using="gin"),
        Index(
            "ix_devices_attributes",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ),
        Index(
            "ix_devices_search_text_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
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
    # What `q=` searches (by trigram similarity), and what name__ic / name__isw narrow through
    # its index: it starts with the name.
    search_text: Mapped[str] = mapped_column(
        Text,
        Computed(
            "name || ' ' || coalesce(serial_number, '') || ' ' || coalesce(model, '')",
            persisted=True,
        ),
        deferred=True,
    )
