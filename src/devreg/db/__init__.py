"""PostgreSQL: engine and sessions, the asyncpg driver beneath them (statements, COPY, bulk loads,
keyset pages, rows rendered as JSON by the server), the embedded cluster, and the glue to
Alembic."""
