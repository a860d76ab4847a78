"""Alembic, driven from devreg: upgrades run under an advisory lock so concurrent starters
(several workers, several replicas) apply each migration exactly once, each migration in a
transaction of its own."""

import re
import traceback
from collections.abc import Callable
from configparser import DEFAULTSECT
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Column, Connection, Index, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.schema import SchemaItem

from devreg.errors import sqlstate_of

# Where alembic.ini and migrations/ are: inside the package when installed from a wheel, else at
# the root of the checkout this module runs from.
_PACKAGED = Path(__file__).resolve().parents[1] / "_alembic"
ALEMBIC_HOME = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3]
# Any constant works; it only has to be the same for every devreg process.
MIGRATION_LOCK_KEY = 0x6465767265670001

_Operation = Callable[[Config], None]


def compared(
    schema_item: SchemaItem, name: str | None, kind: str, reflected: bool, other: Any
) -> bool:
    """Whether autogenerate compares `schema_item` of the models with the database's (`other`,
    when both have it): not an index on an expression found on both sides, which PostgreSQL
    writes back in its own words (casts, parentheses, line breaks) that alembic cannot match
    with the model's, so that it would propose to drop and make the index again in every new
    revision. One on a side alone is still compared: a migration that lacks it is found.
    (alembic's `include_object`.)"""
    return not (
        other is not None
        and isinstance(schema_item, Index)
        and not all(isinstance(part, Column) for part in schema_item.expressions)
    )


def alembic_config() -> Config:
    config = Config(str(ALEMBIC_HOME / "alembic.ini"))
    # alembic.ini is read by ConfigParser, to which "%" begins a reference to another value: a
    # directory named with one (a CI workspace's `fix%2Fx`) is written "%%", alembic's own
    # %(here)s too, which it writes as it is.
    config.file_config.set(DEFAULTSECT, "here", _config_value(ALEMBIC_HOME))
    config.set_main_option("script_location", _config_value(ALEMBIC_HOME / "migrations"))
    return config


def _config_value(path: Path) -> str:
    return str(path).replace("%", "%%")


# Where Alembic resolves a revision name (and asserts on a step past the newest).
_REVISION_MAP = str(Path("alembic", "script", "revision.py"))


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _migrate(engine, revision, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str = "-1") -> None:
    await _migrate(engine, revision, lambda config: command.downgrade(config, revision))


# A step ("head+1", "x@-1") at the end of the revisions' line.
_RELATIVE = re.compile(r"[+-]\d+$")


_USE_IT_AS_IT_IS = "use that release, or set MIGRATE_ON_START=false to use the database as it is"


class DatabaseFromANewerRelease(CommandError):
    """The database is at a revision this release does not know: a newer one migrated it."""

    def __init__(self, revision: str, remedy: str = _USE_IT_AS_IT_IS) -> None:
        self.revision = revision
        super().__init__(
            f"the database is at revision {revision}, which this release does not know (a "
            f"newer release migrated it): {remedy}"
        )


class AnotherApplicationsDatabase(CommandError):
    """The database is at a revision this release does not know, and holds none of devreg's
    tables: another application's migrations made it (a tutorial's, say)."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"the database is at revision {revision}, which this release does not know, and "
            "holds no devices table: it is another application's (a tutorial's, say); give "
            "devreg a database of its own"
        )


class TablesOfAnotherApplication(CommandError):
    """A database devreg never migrated holds tables named as devreg's: another application
    made them, without Alembic (the second and third tutorials' `users`)."""

    def __init__(self, tables: str) -> None:
        super().__init__(
            f"the database already holds tables devreg did not make ({tables}): it is another "
            "application's (a tutorial's, say); give devreg a database of its own"
        )


_DUPLICATE_TABLE = "42P07"


async def _migrate(engine: AsyncEngine, revision: str, operation: _Operation) -> None:
    try:
        await _run_locked(engine, operation)
    except DBAPIError as exc:
        duplicate = sqlstate_of(exc) == _DUPLICATE_TABLE
        if duplicate and await current_revision(engine) is None:
            raise TablesOfAnotherApplication(await _tables(engine)) from exc
        raise
    except CommandError as exc:
        current = await current_revision(engine)
        if current is not None and current not in _known_revisions():
            if await _holds_devices(engine):
                raise DatabaseFromANewerRelease(current) from exc
            raise AnotherApplicationsDatabase(current) from exc
        if _RELATIVE.fullmatch(revision):  # Alembic's "Relative revision -1 didn't produce 1
            # migrations" named neither the end it met nor where the database is.
            end = "first" if revision.startswith("-") else "newest"
            raise CommandError(
                f"{revision} leads past the {end} migration: the database is at "
                f"{current or 'base (empty)'}"
            ) from exc
        raise
    except AssertionError as exc:
        # Alembic asserts, rather than explains, when a revision resolves to nothing (``, `@`)
        # or a step leads past the revisions' line. An assertion anywhere else (a migration's
        # own) is not about that.
        if not traceback.extract_tb(exc.__traceback__)[-1].filename.endswith(_REVISION_MAP):
            raise
        if _RELATIVE.search(revision):
            raise CommandError(f"Relative revision {revision} leads past the revisions") from exc
        raise CommandError(f"No such revision: {revision!r}") from exc


async def _tables(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        names = await connection.scalar(
            text(
                "SELECT string_agg(tablename, ', ' ORDER BY tablename) FROM pg_tables "
                "WHERE schemaname = current_schema()"
            )
        )
        return str(names)


async def _holds_devices(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return bool(await connection.scalar(text("SELECT to_regclass('devices') IS NOT NULL")))


async def serves_this_release(engine: AsyncEngine) -> bool:
    """Whether this release's requests can be served: the database is migrated to its head,
    or by a newer release (MIGRATE_ON_START=false uses it as it is), not another
    application's."""
    revision = await current_revision(engine)
    if is_behind(revision):
        return False
    return revision in _known_revisions() or await _holds_devices(engine)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, None before the first migration. Read from Alembic's
    table itself: a MigrationContext logs two lines at INFO each time it is made, and a
    readiness probe asks every few seconds."""
    async with engine.connect() as connection:
        if await connection.scalar(text("SELECT to_regclass('alembic_version')")) is None:
            return None
        revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        return str(revision) if revision is not None else None


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@cache
def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(each.revision for each in script.walk_revisions())


@cache
def _revisions_before_head() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    return frozenset(each.revision for each in script.walk_revisions() if each.revision != head)


def is_behind(revision: str | None) -> bool:
    """Whether a database at `revision` (None: never migrated) needs `devreg db upgrade` before
    this release can serve it. One at a newer release's revision does not."""
    return revision is None or revision in _revisions_before_head()


async def hold_migration_lock(connection: AsyncConnection) -> None:
    """Wait for, and hold until the session ends, the lock every migrating process takes
    (devreg on start, `devreg db`, plain `alembic`, and earlier releases' transaction-level
    one, which it excludes as well), then end the transaction: each migration runs in its own,
    which lets go of the tables it locked before the next begins."""
    # STATEMENT_TIMEOUT is for requests: a migration may rewrite a big table, and another
    # starter waits for the lock as long as that takes. The session ends with the migrations.
    await connection.execute(text("SET statement_timeout = 0"))
    await connection.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
    await connection.commit()


async def _run_locked(engine: AsyncEngine, operation: _Operation) -> None:
    async with engine.connect() as connection:
        try:
            await _wait_for_answers_as_long_as_they_take(connection)
            await hold_migration_lock(connection)
            await connection.run_sync(_with_connection, operation)
            await connection.commit()
        finally:
            # Not back to the pool without its answer timeout and statement_timeout; closed,
            # it lets go of the migration lock.
            await connection.invalidate()


async def _wait_for_answers_as_long_as_they_take(connection: AsyncConnection) -> None:
    """Lift the connection's answer timeout (asyncpg's command_timeout, which STATEMENT_TIMEOUT
    sets: db.session.answer_timeout) for a migration. asyncpg has no public way to change it
    on an open connection; its protocol reads it from the connection's configuration for each
    statement."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    driver._config = driver._config._replace(command_timeout=None)


def _with_connection(connection: Connection, operation: _Operation) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    operation(config)
