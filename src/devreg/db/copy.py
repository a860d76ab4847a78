"""PostgreSQL's COPY protocol through the session's own connection and transaction."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.db.driver import driver_connection, driver_sql, echo
from devreg.errors import ServiceUnavailable, sqlstate_problem

_CHUNK_BYTES = 256 * 1024
_CHUNKS_IN_FLIGHT = 8  # with _CHUNK_BYTES, what bounds the memory one export uses


async def copy_out(
    session: AsyncSession, statement: Select[Any], **options: Any
) -> AsyncGenerator[bytes, None]:
    """The rows of `statement` as COPY writes them (`options`: asyncpg's copy_from_query
    options, e.g. format="csv", header=True), in chunks, with bounded memory."""
    connection = await driver_connection(session)
    sql, arguments = driver_sql(statement, (await session.connection()).dialect)
    echo(sql)
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_CHUNKS_IN_FLIGHT)
    pending = bytearray()

    async def collect(data: bytes) -> None:
        pending.extend(data)
        if len(pending) >= _CHUNK_BYTES:
            await chunks.put(bytes(pending))
            pending.clear()

    async def produce() -> None:
        try:
            await connection.copy_from_query(sql, *arguments, output=collect, **options)
            if pending:
                await chunks.put(bytes(pending))
        finally:
            await chunks.put(None)

    producer = asyncio.create_task(produce())
    try:
        while (chunk := await chunks.get()) is not None:
            yield chunk
        try:
            await producer  # raises what COPY raised, if anything
        except asyncpg.PostgresError as exc:
            problem = sqlstate_problem(str(exc.sqlstate))  # a timeout, the server going away
            if problem is None:
                raise
            raise problem from None
        except (asyncpg.InterfaceError, OSError):  # the connection went away mid-COPY
            raise ServiceUnavailable() from None
    finally:
        # The reader stopped early (the client went away): COPY's end, or its error, no longer
        # matters, but an error left unread in its task would be logged as a crash.
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
