import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    String,
    case,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from devreg.db.base import Base


class ObjectType(enum.StrEnum):
    DEVICE = "device"
    USER = "user"


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Change(Base):
    """One create, update or delete of a device or user. Written by triggers (see the
    migration that made this table), never by devreg's Python code."""

    __tablename__ = "changes"
    __table_args__ = (
        CheckConstraint("action IN ('create', 'update', 'delete')", name="action_known"),
        Index("ix_changes_object_type_object_id_id", "object_type", "object_id", "id"),
        Index("ix_changes_user_id_id", "user_id", "id"),
        # One type's or one action's records, in the log's order from where they are: read
        # from the primary key, a type or action whose records all came long ago (user
        # records, deletes) filtered out every later record (0.3-0.45 s at 3 million).
        Index("ix_changes_object_type_id", "object_type", "id"),
        Index("ix_changes_action_id", "action", "id"),
        Index("ix_changes_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    object_type: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(8))
    # Who acted; no foreign keys: the record outlives the user and the token.
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    token_id: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # A device's owner after the change (before it, for a delete): the user who may read it.
    owner_id: Mapped[int | None] = mapped_column(BigInteger)
    # Create: every field after; delete: every field before; update: only the changed fields.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


# The user a non-admin token must be of to read a record: a device record's owner (owner_id),
# a user record's user. Indexed with the id, so that one user's records are read newest first
# from where they are, however far back (ChangeRepository).
READER = case(
    (Change.object_type == literal_column(f"'{ObjectType.USER}'"), Change.object_id),
    else_=Change.owner_id,
)
Index("ix_changes_reader_id", READER, Change.id)
