"""An index that lists the change records a user may read, newest first, wherever they are.

A non-admin token reads the records of its user's devices (owner_id) and of its user's own
record. Asked as `owner_id = N OR (object_type = 'user' AND object_id = N)`, the newest first,
PostgreSQL read the log's primary key backwards, filtering out every record since the user's
last: 0.34-0.46 s a page for a user whose 300,000 records came before 2.7 million others. The
two are now one expression (changes.models.READER), indexed with the id. The index on
(owner_id, id), which served only that rule, stays for this release: servers of the release
before, serving while the database migrates, read a non-admin token's log through it (0.44-0.61
s a request without it, at 2 million records); the next release can drop it.

Building it reads the change log once and holds its writes (device and user writes) meanwhile:
2 s for 3 million records here.

Revision ID: 9d2f6a1c4e87
Revises: 5b0e3d7c2f41
Create Date: 2026-12-05 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d2f6a1c4e87"
down_revision: str | None = "5b0e3d7c2f41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_changes_reader_id",
        "changes",
        [
            sa.text("(CASE WHEN object_type = 'user' THEN object_id ELSE owner_id END)"),
            "id",
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_changes_reader_id", table_name="changes")
