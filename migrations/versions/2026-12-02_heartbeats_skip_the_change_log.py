"""Updates are recorded by a row trigger that fires only when a recorded field changed.

The statement trigger ran for every UPDATE, heartbeats included: transition tables, a function
call and a diff query, to record nothing. A row trigger's WHEN condition costs a comparison,
and heartbeats (which only move last_seen_at) never fire it.

Revision ID: 7e2b9d4c1f58
Revises: 5d1a8f3c9e42
Create Date: 2026-12-02 01:25:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7e2b9d4c1f58"
down_revision: str | None = "5d1a8f3c9e42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Arguments: the object type; the columns left out of the record (kept by the database).
RECORD_UPDATE_FUNCTION = """
CREATE FUNCTION devreg_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    actor jsonb := nullif(current_setting('devreg.actor', true), '')::jsonb;
    old_fields jsonb := to_jsonb(OLD) - TG_ARGV[1]::text[];
    new_fields jsonb := to_jsonb(NEW) - TG_ARGV[1]::text[];
BEGIN
    IF current_setting('devreg.record_changes', true) = 'off' THEN
        RETURN NULL;
    END IF;
    INSERT INTO changes (
        object_type, object_id, action, user_id, token_id, request_id, before, after
    )
    VALUES (
        TG_ARGV[0], NEW.id, 'update', (actor->>'user_id')::bigint,
        (actor->>'token_id')::bigint, actor->>'request_id',
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(old_fields)
         WHERE new_fields->key IS DISTINCT FROM value),
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(new_fields)
         WHERE old_fields->key IS DISTINCT FROM value)
    );
    RETURN NULL;
END
$$
"""

# The fields whose change is a change (last_seen_at alone is telemetry).
_RECORDED = {
    "devices": (
        "device",
        "{search_text,created_at,updated_at,version}",
        "name, serial_number, model, status, owner_id, tags, attributes",
    ),
    "users": ("user", "{created_at,updated_at}", "name, email"),
}


def _row(prefix: str, columns: str) -> str:
    return "(" + ", ".join(f"{prefix}.{column.strip()}" for column in columns.split(",")) + ")"


def upgrade() -> None:
    op.execute(RECORD_UPDATE_FUNCTION)
    for table, (object_type, left_out, recorded) in _RECORDED.items():
        op.execute(f"DROP TRIGGER {table}_record_update ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_record_update AFTER UPDATE ON {table} FOR EACH ROW "
            f"WHEN ({_row('OLD', recorded)} IS DISTINCT FROM {_row('NEW', recorded)}) "
            f"EXECUTE FUNCTION devreg_record_update('{object_type}', '{left_out}')"
        )


def downgrade() -> None:
    for table, (object_type, left_out, _) in _RECORDED.items():
        telemetry = "{last_seen_at}" if table == "devices" else "{}"
        op.execute(f"DROP TRIGGER {table}_record_update ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_record_update AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION devreg_record_changes('{object_type}', '{left_out}', '{telemetry}')"
        )
    op.execute("DROP FUNCTION devreg_record_update()")
