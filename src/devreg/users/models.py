from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from devreg.db.base import Base, Timestamped

NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 320


class User(Timestamped, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("btrim(name) <> ''", name="name_not_blank"),
        Index("ix_users_name_id", "name", "id"),
        Index("ix_users_created_at_id", "created_at", "id"),
        Index(
            "ix_users_name_trgm",
            "name",
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    email: Mapped[str | None] = mapped_column(String(EMAIL_MAX_LENGTH))


# Emails are unique whatever their case: Ann@example.org and ann@example.org are one address.
Index("uq_users_email_lower", func.lower(User.email), unique=True)
