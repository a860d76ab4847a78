"""An idempotent write's answer is kept as the bytes sent, so a replay sends the same bytes
(jsonb reordered keys and rewrote numbers).

Revision ID: 3b9e5c7a2d14
Revises: 8a3f6d2e4b71
Create Date: 2026-12-02 19:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "3b9e5c7a2d14"
down_revision: str | None = "8a3f6d2e4b71"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An answer without a body (a heartbeat's 204) was kept as JSON null: it has no bytes.
    op.execute(
        "ALTER TABLE idempotency_keys ALTER COLUMN body TYPE bytea "
        "USING CASE WHEN body = 'null'::jsonb THEN NULL ELSE convert_to(body::text, 'UTF8') END"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE idempotency_keys ALTER COLUMN body TYPE jsonb "
        "USING convert_from(body, 'UTF8')::jsonb"
    )
