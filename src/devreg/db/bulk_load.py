"""Writing many rows into a table that holds fewer: its secondary indexes built once at the end
instead of kept up to date row by row."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Table, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, DropIndex

from devreg.db.base import Base
from devreg.db.session import UnitOfWork
from devreg.errors import LOCK_NOT_AVAILABLE, sqlstate_of

CLIENT_CHECK = "SET LOCAL client_connection_check_interval = '1s'"
# A setting this server does not have (before PostgreSQL 14), or may not set on its platform.
_SETTING_UNAVAILABLE = ("42704", "22023")

_OWNED = "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = CAST(:table AS regclass)"
_INDEX_NAMES = (
    "SELECT ix.relname FROM pg_index JOIN pg_class AS ix ON ix.oid = indexrelid "
    "WHERE indrelid = CAST(:table AS regclass)"
)

# From this many rows, into a table holding fewer, the indexes are built after the rows go in:
# most of a large seed's or import's time was keeping them up to date.
INDEXES_BUILT_AFTER_FROM = 100_000


@asynccontextmanager
async def bulk_loading(work: UnitOfWork, model: type[Base], *, adding: int) -> AsyncIterator[bool]:
    """Rows written inside, about `adding` of them, go in without `model`'s table's secondary
    indexes (_secondary_indexes_built_after) when they are INDEXES_BUILT_AFTER_FROM or more,
    more than the table holds, this role owns the table (only its owner may drop and make its
    indexes), the table has every index the model names (_indexed_as_modelled), and the table
    can be had at once: no other transaction is using it (another bulk load that has counted its
    rows, say). The table is then locked until the transaction ends.
    Otherwise the rows go in as any others, kept in the indexes as they come; nothing waits,
    and two bulk loads that had both counted cannot each wait for the other. Yields whether the
    indexes are to be built at the end."""
    table: Table = model.__table__  # type: ignore[assignment]
    await _ended_if_the_client_goes(work)
    if (
        adding >= INDEXES_BUILT_AFTER_FROM
        and await _outnumbers(work, table, adding)
        and await _owned(work, table)
        and await _indexed_as_modelled(work, table)
        and await _locked_at_once(work, table)
    ):
        async with _secondary_indexes_built_after(work, table):
            yield True
    else:
        yield False


async def _ended_if_the_client_goes(work: UnitOfWork) -> None:
    """The transaction's statements end soon after their client goes. PostgreSQL reads from the
    client only between statements: a seed or import killed amid its INSERT left it running to
    its end, holding the table's lock (all requests waited 45 s after a killed million-device
    seed), and then rolled back. PostgreSQL 14 and later can look for the client as it works,
    where its platform lets it (14 on Linux, 15 also on macOS and the BSDs, never on Windows);
    elsewhere the load goes on as before."""
    try:
        async with work.begin_nested():
            await work.session.execute(text(CLIENT_CHECK))
    except DBAPIError as exc:
        if sqlstate_of(exc) not in _SETTING_UNAVAILABLE:
            raise


async def _outnumbers(work: UnitOfWork, table: Table, adding: int) -> bool:
    """Whether `adding` rows are more than `table` holds: counted, but no further than `adding`."""
    present = select(table.c[0]).limit(adding).subquery()
    counted = await work.session.scalar(select(func.count()).select_from(present))
    return int(counted or 0) < adding


def _quoted(work: UnitOfWork, table: Table) -> str:
    """The table's name as SQL writes it (quoted where it must be)."""
    return work.session.get_bind().dialect.identifier_preparer.format_table(table)


async def _owned(work: UnitOfWork, table: Table) -> bool:
    """Whether this role has its table owner's rights (a member of the owner's role, or a
    superuser): a role granted the rows alone, the tables migrated by another, may not drop an
    index."""
    name = _quoted(work, table)
    return bool(await work.session.scalar(text(_OWNED), {"table": name}))


async def _indexed_as_modelled(work: UnitOfWork, table: Table) -> bool:
    """Whether `table` has every secondary index its model names. A database not yet migrated
    to this release (MIGRATE_ON_START=false) may lack one, which cannot be dropped, and which,
    made at the end, would fail the migration that makes it."""
    name = _quoted(work, table)
    present = set(await work.session.scalars(text(_INDEX_NAMES), {"table": name}))
    return {str(index.name) for index in table.indexes} <= present


async def _locked_at_once(work: UnitOfWork, table: Table) -> bool:
    """Whether `table` could be locked against every other transaction without waiting. Waiting
    would queue every later reader behind this one, for as long as the slowest reader before it
    (an export, say) takes."""
    name = _quoted(work, table)
    try:
        async with work.begin_nested():
            await work.session.execute(text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE NOWAIT"))
    except DBAPIError as exc:
        if sqlstate_of(exc) != LOCK_NOT_AVAILABLE:
            raise
        return False
    return True


@asynccontextmanager
async def _secondary_indexes_built_after(work: UnitOfWork, table: Table) -> AsyncIterator[None]:
    """Rows written inside go into `table` without its secondary indexes (the schema's `Index`es),
    which are made again when the block ends, in the same transaction: each built once over the
    whole table, and its statistics gathered afresh. Its primary key, unique and foreign keys
    stay, and keep checking every row.

    A million devices into an empty registry took 0.55-0.65 of the time (docs/benchmarks.md), but
    the table is locked against every reader and writer until the transaction ends, and the
    rebuild reads all of it: worth it only when most of its rows are new. When the block
    raises, nothing is made again: the transaction is to roll back, and takes the drops with it.
    """
    connection = await work.session.connection()
    indexes = sorted(table.indexes, key=lambda index: str(index.name))
    for index in indexes:
        await connection.execute(DropIndex(index))
    yield
    for index in indexes:
        await connection.execute(CreateIndex(index))
    # The planner's statistics of the table most of whose rows are new: autovacuum would bring
    # them up to date a minute or so later, its estimates and plans those of the table before.
    name = connection.dialect.identifier_preparer.format_table(table)
    await connection.execute(text(f"ANALYZE {name}"))
