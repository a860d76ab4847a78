"""Writing many rows into a table that holds fewer: its indexes and foreign keys built once at
the end instead of kept up to date row by row."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Table, func, select
from sqlalchemy.schema import AddConstraint, CreateIndex, DropConstraint, DropIndex

from devreg.db.session import UnitOfWork


async def holds_fewer_rows(work: UnitOfWork, table: Table, than: int) -> bool:
    """Whether `table` has fewer than `than` rows: counted, but no further than `than`."""
    present = select(table.c[0]).limit(than).subquery()
    counted = await work.session.scalar(select(func.count()).select_from(present))
    return int(counted or 0) < than


@asynccontextmanager
async def secondary_indexes_built_after(work: UnitOfWork, table: Table) -> AsyncIterator[None]:
    """Rows written inside go into `table` without its secondary indexes (the schema's `Index`es)
    and foreign keys, which are made again when the block ends, in the same transaction: built
    and checked once over the whole table. Its primary key and unique constraints stay.

    For a million devices into an empty registry that took half the time (docs/benchmarks.md), but
    the table is locked against every reader and writer until the transaction ends, and the
    rebuild reads all of it: worth it only when most of its rows are new. When the block
    raises, nothing is made again: the transaction is to roll back, and takes the drops with it.
    """
    connection = await work.session.connection()
    indexes = sorted(table.indexes, key=lambda index: str(index.name))
    foreign_keys = sorted(table.foreign_key_constraints, key=lambda key: str(key.name))
    for foreign_key in foreign_keys:
        await connection.execute(DropConstraint(foreign_key))
    for index in indexes:
        await connection.execute(DropIndex(index))
    yield
    for index in indexes:
        await connection.execute(CreateIndex(index))
    for foreign_key in foreign_keys:
        await connection.execute(AddConstraint(foreign_key))
