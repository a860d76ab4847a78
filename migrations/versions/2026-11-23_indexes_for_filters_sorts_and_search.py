"""Indexes for every filter, sort and search; a generated search_text column; pg_trgm.

Revision ID: 75966f8fc5c3
Revises: f4a611bf9db3
Create Date: 2026-11-23 19:48:28.884847+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "75966f8fc5c3"
down_revision: str | None = "f4a611bf9db3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # pg_trgm is a trusted extension: a database owner may create it, no superuser needed.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.add_column(
        "devices",
        sa.Column(
            "search_text",
            sa.Text(),
            sa.Computed(
                "name || ' ' || coalesce(serial_number, '') || ' ' || coalesce(model, '')",
                persisted=True,
            ),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_devices_attributes",
        "devices",
        ["attributes"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
    )
    op.create_index("ix_devices_created_at_id", "devices", ["created_at", "id"], unique=False)
    op.create_index("ix_devices_last_seen_at_id", "devices", ["last_seen_at", "id"], unique=False)
    op.create_index("ix_devices_model_id", "devices", ["model", "id"], unique=False)
    op.create_index("ix_devices_name_id", "devices", ["name", "id"], unique=False)
    op.create_index(
        "ix_devices_search_text_trgm",
        "devices",
        ["search_text"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )
    op.create_index("ix_devices_status_id", "devices", ["status", "id"], unique=False)
    op.create_index("ix_devices_tags", "devices", ["tags"], unique=False, postgresql_using="gin")
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"], unique=False)
    op.create_index("ix_users_name_id", "users", ["name", "id"], unique=False)
    op.create_index(
        "ix_users_name_trgm",
        "users",
        ["name"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"name": "gin_trgm_ops"},
    )


def downgrade() -> None:
    op.drop_index(
        "ix_users_name_trgm",
        table_name="users",
        postgresql_using="gin",
        postgresql_ops={"name": "gin_trgm_ops"},
    )
    op.drop_index("ix_users_name_id", table_name="users")
    op.drop_index("ix_users_created_at_id", table_name="users")
    op.drop_index("ix_devices_tags", table_name="devices", postgresql_using="gin")
    op.drop_index("ix_devices_status_id", table_name="devices")
    op.drop_index(
        "ix_devices_search_text_trgm",
        table_name="devices",
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )
    op.drop_index("ix_devices_name_id", table_name="devices")
    op.drop_index("ix_devices_model_id", table_name="devices")
    op.drop_index("ix_devices_last_seen_at_id", table_name="devices")
    op.drop_index("ix_devices_created_at_id", table_name="devices")
    op.drop_index(
        "ix_devices_attributes",
        table_name="devices",
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
    )
    op.drop_column("devices", "search_text")
    # pg_trgm stays: other objects may depend on it, and it costs nothing unused.
