"""A device's version trigger compares the columns it may, so that a dump can be restored.

The trigger that bumps a device's version fired `WHEN (OLD.* IS DISTINCT FROM NEW.*)`, written
before devices had their generated search_text column. PostgreSQL refuses a BEFORE trigger whose
condition reads NEW's generated columns, but checks that only when the trigger is created: the
database worked, and every re-creation of it failed there. pg_restore of a dump reported the
error and went on, leaving a registry whose versions (and ETags, so If-Match) never changed;
pg_upgrade to a newer PostgreSQL stopped. The condition now names the columns, search_text left
out (it follows from name, serial_number and model); a database restored from such a dump gets
its trigger back.

Revision ID: c81d4e0b9a27
Revises: a2eb37244a61
Create Date: 2026-12-05 11:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c81d4e0b9a27"
down_revision: str | None = "a2eb37244a61"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column of devices but the generated ones.
_COMPARED = (
    "id",
    "name",
    "serial_number",
    "model",
    "status",
    "owner_id",
    "tags",
    "attributes",
    "last_seen_at",
    "created_at",
    "updated_at",
    "version",
)


def _row(prefix: str) -> str:
    return "(" + ", ".join(f"{prefix}.{column}" for column in _COMPARED) + ")"


def upgrade() -> None:
    # Missing from a database restored from an earlier dump: re-created, it works again.
    op.execute("DROP TRIGGER IF EXISTS devices_bump_version ON devices")
    op.execute(
        "CREATE TRIGGER devices_bump_version BEFORE UPDATE ON devices FOR EACH ROW "
        f"WHEN ({_row('OLD')} IS DISTINCT FROM {_row('NEW')}) "
        "EXECUTE FUNCTION devreg_bump_version()"
    )


def downgrade() -> None:
    """The trigger stays as it is: the condition it had cannot be created again while devices
    has its generated column, and it compares the same columns."""
