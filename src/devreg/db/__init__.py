"""Engine and sessions, the embedded PostgreSQL launcher, and the glue to Alembic."""
