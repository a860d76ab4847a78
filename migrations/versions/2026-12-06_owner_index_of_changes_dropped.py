"""The change log's (owner_id, id) index goes: nothing reads through it since READER's index
(ix_changes_reader_id) serves a non-admin token's log, and every change record paid for it.

It was kept one release past that, for servers of the release before, which read a non-admin
token's log through it while an upgrade rolled out; two releases have followed since. A device
create, update or delete now writes one index entry fewer.

Revision ID: 5e8b3f1a7c40
Revises: 4c7e1a9b2d63
Create Date: 2026-12-06 04:20:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5e8b3f1a7c40"
down_revision: str | None = "4c7e1a9b2d63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_changes_owner_id_id", table_name="changes")


def downgrade() -> None:
    op.create_index("ix_changes_owner_id_id", "changes", ["owner_id", "id"])
