"""The first token is remembered: AUTH=auto stays closed once a token has been created, even when
every token is gone again (deleted with its user).

Revision ID: 8a3f6d2e4b71
Revises: 7e2b9d4c1f58
Create Date: 2026-12-02 16:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8a3f6d2e4b71"
down_revision: str | None = "7e2b9d4c1f58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REMEMBER_FIRST_FUNCTION = """
CREATE FUNCTION devreg_note_first_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO first_token (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "first_token",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_first_token_only_one")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_first_token")),
    )
    # A token was made if one is left, or if the tokens' ids were ever drawn: upgrading again
    # after a downgrade, every token may be gone with its user.
    op.execute(
        "INSERT INTO first_token (id, created_at) "
        "SELECT 1, coalesce(min(created_at), now()) FROM api_tokens HAVING count(*) > 0 "
        "OR pg_sequence_last_value(pg_get_serial_sequence('api_tokens', 'id')::regclass) "
        "IS NOT NULL"
    )
    op.execute(REMEMBER_FIRST_FUNCTION)
    op.execute(
        "CREATE TRIGGER api_tokens_note_first AFTER INSERT ON api_tokens "
        "FOR EACH ROW EXECUTE FUNCTION devreg_note_first_token()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_tokens_note_first ON api_tokens")
    op.execute("DROP FUNCTION devreg_note_first_token()")
    op.drop_table("first_token")
