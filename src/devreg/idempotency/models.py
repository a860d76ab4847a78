from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, LargeBinary, SmallInteger, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from devreg.db.base import Base

KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY = "Idempotency-Key"  # the header


class IdempotencyKey(Base):
    """A write made with an Idempotency-Key: what was asked (a fingerprint) and what was
    answered, kept to answer a retry the same way."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    # The token that sent the key (0 while the API is open): keys are per token.
    token_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[int | None] = mapped_column(SmallInteger)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # The first answer's body as sent, to send again byte for byte.
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
