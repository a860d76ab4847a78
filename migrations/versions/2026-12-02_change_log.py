"""The change log: a record of every create, update and delete of a device or user.

Statement-level triggers write it, from the rows each statement changed (its transition
tables), in the same transaction: no write path can skip it, a bulk write logs its rows with one
INSERT, and the before/after of an update holds only the fields that changed. Who acted (user,
token, request id) comes from the transaction-local setting `devreg.actor`, which devreg sets
within the writing statement itself or its transaction.

Revision ID: 9c4f2e7b1a36
Revises: 3b8e1c5a7d20
Create Date: 2026-12-02 00:25:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "9c4f2e7b1a36"
down_revision: str | None = "3b8e1c5a7d20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Arguments: the object type; the columns left out of the record (kept by the database);
# the columns that alone are not a change (a heartbeat's last_seen_at).
RECORD_CHANGES_FUNCTION = """
CREATE FUNCTION devreg_record_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    actor jsonb := nullif(current_setting('devreg.actor', true), '')::jsonb;
    left_out text[] := TG_ARGV[1]::text[];
    telemetry text[] := TG_ARGV[2]::text[];
BEGIN
    IF current_setting('devreg.record_changes', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO changes (object_type, object_id, action, user_id, token_id, request_id, after)
        SELECT TG_ARGV[0], written.id, 'create', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id', to_jsonb(written) - left_out
        FROM new_rows AS written ORDER BY written.id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO changes (object_type, object_id, action, user_id, token_id, request_id, before)
        SELECT TG_ARGV[0], gone.id, 'delete', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id', to_jsonb(gone) - left_out
        FROM old_rows AS gone ORDER BY gone.id;
    ELSE
        INSERT INTO changes (
            object_type, object_id, action, user_id, token_id, request_id, before, after
        )
        SELECT TG_ARGV[0], diff.id, 'update', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id', diff.before, diff.after
        FROM (
            SELECT old_row.id,
                   (SELECT jsonb_object_agg(key, value) FROM jsonb_each(old_row.fields)
                    WHERE new_row.fields->key IS DISTINCT FROM value) AS before,
                   (SELECT jsonb_object_agg(key, value) FROM jsonb_each(new_row.fields)
                    WHERE old_row.fields->key IS DISTINCT FROM value) AS after
            FROM (SELECT id, to_jsonb(o) - left_out AS fields FROM old_rows AS o) AS old_row
            JOIN (SELECT id, to_jsonb(n) - left_out AS fields FROM new_rows AS n) AS new_row
                USING (id)
        ) AS diff
        WHERE diff.after - telemetry <> '{}'::jsonb
        ORDER BY diff.id;
    END IF;
    RETURN NULL;
END
$$
"""

_TRACKED = {
    "devices": ("device", "{search_text,created_at,updated_at,version}", "{last_seen_at}"),
    "users": ("user", "{created_at,updated_at}", "{}"),
}
_TRANSITIONS = {
    "INSERT": "NEW TABLE AS new_rows",
    "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("object_type", sa.String(length=16), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("token_id", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "action IN ('create', 'update', 'delete')", name=op.f("ck_changes_action_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
    )
    op.create_index("ix_changes_at", "changes", ["at"], unique=False)
    op.create_index(
        "ix_changes_object_type_object_id_id",
        "changes",
        ["object_type", "object_id", "id"],
        unique=False,
    )
    op.create_index("ix_changes_user_id_id", "changes", ["user_id", "id"], unique=False)
    op.execute(RECORD_CHANGES_FUNCTION)
    for table, (object_type, left_out, telemetry) in _TRACKED.items():
        for event, transitions in _TRANSITIONS.items():
            op.execute(
                f"CREATE TRIGGER {table}_record_{event.lower()} AFTER {event} ON {table} "
                f"REFERENCING {transitions} FOR EACH STATEMENT EXECUTE FUNCTION "
                f"devreg_record_changes('{object_type}', '{left_out}', '{telemetry}')"
            )


def downgrade() -> None:
    for table in _TRACKED:
        for event in _TRANSITIONS:
            op.execute(f"DROP TRIGGER {table}_record_{event.lower()} ON {table}")
    op.execute("DROP FUNCTION devreg_record_changes()")
    op.drop_index("ix_changes_user_id_id", table_name="changes")
    op.drop_index("ix_changes_object_type_object_id_id", table_name="changes")
    op.drop_index("ix_changes_at", table_name="changes")
    op.drop_table("changes")
