"""Alembic environment: devreg's metadata, and devreg's database.

devreg passes an open connection (`config.attributes["connection"]`) when it migrates on start
or from `devreg db`; plain `alembic` commands resolve the database from devreg's settings.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devreg.auth import models as _auth_models  # noqa: F401
from devreg.changes import models as _changes_models  # noqa: F401
from devreg.config import driver_connect_args, get_settings
from devreg.db.base import Base
from devreg.db.embedded import resolve_database_url
from devreg.db.migrations import compared, hold_migration_lock
from devreg.devices import models as _devices_models  # noqa: F401 - registers the tables
from devreg.idempotency import models as _idempotency_models  # noqa: F401
from devreg.users import models as _users_models  # noqa: F401

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_server_default=True,
        include_object=compared,
        # Each migration commits before the next: one transaction for all held what each
        # locked (devices, for a trigger) until the last was done, while the servers of the
        # release before went on serving, and deadlocked their requests.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_from_settings() -> None:
    url = await resolve_database_url(get_settings())
    engine = create_async_engine(url, poolclass=NullPool, connect_args=driver_connect_args(url))
    try:
        async with engine.connect() as connection:
            await hold_migration_lock(connection)  # as devreg's own migrations do
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("devreg's migrations run online only: they need the database")

given_connection = config.attributes.get("connection")
if given_connection is not None:
    run_migrations(given_connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_migrations_from_settings())
