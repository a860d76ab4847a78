"""A device's change record names the device's owner at the time: the user who may read it.

A non-admin token read the whole history of every device its user owns now, so a device an
admin gave to another user brought its previous owner's changes (names, attributes, who made
them) along. Each record now keeps `owner_id`, the device's owner after the change (before it,
for a delete), and a non-admin token sees the records of its user's time with the device.
Records written before this revision get the owner their device's log had set by then.

Revision ID: 6f0c2a8d4e19
Revises: 3b9e5c7a2d14
Create Date: 2026-12-03 11:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "6f0c2a8d4e19"
down_revision: str | None = "3b9e5c7a2d14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As 9c4f2e7b1a36 made it, with the owner: a created device's, a deleted one's (users: none).
RECORD_CHANGES_FUNCTION = """
CREATE OR REPLACE FUNCTION devreg_record_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    actor jsonb := nullif(current_setting('devreg.actor', true), '')::jsonb;
    left_out text[] := TG_ARGV[1]::text[];
    telemetry text[] := TG_ARGV[2]::text[];
BEGIN
    IF current_setting('devreg.record_changes', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO changes (
            object_type, object_id, action, user_id, token_id, request_id, owner_id, after
        )
        SELECT TG_ARGV[0], written.id, 'create', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id',
               (to_jsonb(written)->>'owner_id')::bigint, to_jsonb(written) - left_out
        FROM new_rows AS written ORDER BY written.id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO changes (
            object_type, object_id, action, user_id, token_id, request_id, owner_id, before
        )
        SELECT TG_ARGV[0], gone.id, 'delete', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id',
               (to_jsonb(gone)->>'owner_id')::bigint, to_jsonb(gone) - left_out
        FROM old_rows AS gone ORDER BY gone.id;
    ELSE
        INSERT INTO changes (
            object_type, object_id, action, user_id, token_id, request_id, owner_id, before, after
        )
        SELECT TG_ARGV[0], diff.id, 'update', (actor->>'user_id')::bigint,
               (actor->>'token_id')::bigint, actor->>'request_id', diff.owner_id, diff.before,
               diff.after
        FROM (
            SELECT old_row.id, (new_row.fields->>'owner_id')::bigint AS owner_id,
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

# As 7e2b9d4c1f58 made it, with the owner after the update.
RECORD_UPDATE_FUNCTION = """
CREATE OR REPLACE FUNCTION devreg_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    actor jsonb := nullif(current_setting('devreg.actor', true), '')::jsonb;
    old_fields jsonb := to_jsonb(OLD) - TG_ARGV[1]::text[];
    new_fields jsonb := to_jsonb(NEW) - TG_ARGV[1]::text[];
BEGIN
    IF current_setting('devreg.record_changes', true) = 'off' THEN
        RETURN NULL;
    END IF;
    INSERT INTO changes (
        object_type, object_id, action, user_id, token_id, request_id, owner_id, before, after
    )
    VALUES (
        TG_ARGV[0], NEW.id, 'update', (actor->>'user_id')::bigint,
        (actor->>'token_id')::bigint, actor->>'request_id', (new_fields->>'owner_id')::bigint,
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(old_fields)
         WHERE new_fields->key IS DISTINCT FROM value),
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(new_fields)
         WHERE old_fields->key IS DISTINCT FROM value)
    );
    RETURN NULL;
END
$$
"""

# The owner a record written before this revision gets: the one its device's log last set at or
# before it (a create's, an update's that moved the device, a delete's); for records older than
# any such (their create pruned), the owner the first of those says the device had before it,
# and with none at all, the device's owner now.
_BACKFILL = """
UPDATE changes SET owner_id = known.owner_id
FROM (
    SELECT id, CASE
        WHEN owner_group > 0 THEN (first_value(owner_set) OVER (
            PARTITION BY object_id, owner_group ORDER BY id) #>> '{}')::bigint
        WHEN owner_until_set IS NOT NULL THEN (owner_until_set #>> '{}')::bigint
        ELSE (SELECT owner_id FROM devices WHERE devices.id = grouped.object_id)
    END AS owner_id
    FROM (
        SELECT id, object_id, owner_set,
               count(owner_set) OVER (PARTITION BY object_id ORDER BY id) AS owner_group,
               first_value(owner_before) OVER (
                   PARTITION BY object_id ORDER BY owner_set IS NULL, id
               ) AS owner_until_set
        FROM (
            SELECT id, object_id, CASE
                WHEN action = 'delete' THEN before -> 'owner_id'
                ELSE after -> 'owner_id'
            END AS owner_set,
            before -> 'owner_id' AS owner_before
            FROM changes WHERE object_type = 'device'
        ) AS marked
    ) AS grouped
) AS known
WHERE changes.id = known.id
"""


def upgrade() -> None:
    op.add_column("changes", sa.Column("owner_id", sa.BigInteger(), nullable=True))
    op.execute(_BACKFILL)
    op.create_index("ix_changes_owner_id_id", "changes", ["owner_id", "id"], unique=False)
    op.execute(RECORD_CHANGES_FUNCTION)
    op.execute(RECORD_UPDATE_FUNCTION)


def downgrade() -> None:
    for made_by, function in (
        ("9c4f2e7b1a36", "RECORD_CHANGES_FUNCTION"),
        ("7e2b9d4c1f58", "RECORD_UPDATE_FUNCTION"),
    ):
        created = getattr(context.script.get_revision(made_by).module, function)
        op.execute(created.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.drop_index("ix_changes_owner_id_id", table_name="changes")
    op.drop_column("changes", "owner_id")
