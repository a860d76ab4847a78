"""PostgreSQL's COPY protocol through the session's own connection and transaction."""

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg
from sqlalchemy import Select, text
from sqlalchemy.ext.asyncio import AsyncSession

from devreg.db.driver import discard, discard_if_lost, driver_connection, driver_sql, echo
from devreg.errors import DatabaseOutage, StatementTimedOut, sqlstate_problem

_CHUNK_BYTES = 256 * 1024
_CHUNKS_IN_FLIGHT = 8  # with _CHUNK_BYTES, what bounds the memory one export uses

# asyncpg hands over what one read of the socket brought, and PostgreSQL sends as it writes, 8 KiB
# at a time: read the moment it arrives, a million devices came in some 40,000 pieces, each a turn
# of the event loop, about 100 µs of Python (docs/benchmarks.md). After a small piece, a pause
# lets the next read take what arrived meanwhile; the server goes on writing into the socket.
_SMALL_READ_BYTES = 64 * 1024
_PAUSE_AFTER_SMALL_READ = 0.002  # seconds

# A COPY sends its rows as they are made: a plan that makes every row before the first one (a
# parallel scan, gathered in order by a sort) kept an NDJSON export of 200,000 devices from
# sending a byte for 1.5 s and wrote 80 MB of temporary files, per export. (Its rows' JSON, costly
# to write, made sharing the work between processes look cheaper than reading the id index in
# order; the CSV export, its rows cheaper, was read from the index.)
STREAMING_PLANS = "SET LOCAL max_parallel_workers_per_gather = 0"


async def copy_out(
    session: AsyncSession, statement: Select[Any], **options: Any
) -> AsyncGenerator[bytes, None]:
    """The rows of `statement` as COPY writes them (`options`: asyncpg's copy_from_query
    options, e.g. format="csv", header=True), in chunks, with bounded memory."""
    # Through the session, which begins its transaction first (the driver's connection alone
    # would not: SET LOCAL outside one is a warning, and no setting).
    await session.execute(text(STREAMING_PLANS))
    connection = await driver_connection(session)
    sql, arguments = driver_sql(statement, (await session.connection()).dialect)
    echo(sql)
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_CHUNKS_IN_FLIGHT)
    pending = bytearray()
    large = False

    async def collect(data: bytes) -> None:
        nonlocal large
        pending.extend(data)
        if len(pending) >= _CHUNK_BYTES:
            await chunks.put(bytes(pending))
            pending.clear()
            large = True
        elif large and len(data) < _SMALL_READ_BYTES:
            # Only past the first chunk: a small export, whose last read is its end, never waits.
            await asyncio.sleep(_PAUSE_AFTER_SMALL_READ)

    async def produce() -> None:
        try:
            await connection.copy_from_query(sql, *arguments, output=collect, **options)
            if pending:
                await chunks.put(bytes(pending))
        finally:
            # The end, for the reader; unless the reader is gone (it cancelled this task), when
            # the chunks in flight, never taken, would keep it from ever being put.
            if not _cancelling():
                await chunks.put(None)

    producer = asyncio.create_task(produce())
    producer.add_done_callback(_read_outcome)
    try:
        while (chunk := await chunks.get()) is not None:
            yield chunk
        try:
            await producer  # raises what COPY raised, if anything
        except TimeoutError as exc:
            # No answer within STATEMENT_TIMEOUT and its grace (db.session.answer_timeout): the
            # rows' reader too slow to take them, as likely as a silent server. This connection
            # only is ended, not the pool's others, which a slow client says nothing about.
            await discard(session, exc)
            raise StatementTimedOut() from None
        except Exception as exc:
            if await discard_if_lost(session, exc):  # the server went away, before or mid-COPY
                raise DatabaseOutage() from None
            problem = (
                sqlstate_problem(str(exc.sqlstate))  # a timeout, say
                if isinstance(exc, asyncpg.PostgresError)
                else None
            )
            if problem is None:
                raise
            raise problem from exc  # PostgreSQL's words, for the CLI (cli.common.run_async)
    finally:
        if not producer.done():
            # The reader stopped early (the client went away). asyncpg cannot leave a COPY half
            # way: cancelled, its connection fails on the COPY's next message. So it is closed,
            # which ends the COPY, and left out of the pool.
            try:
                await discard(session)
            finally:
                producer.cancel()  # if it waits to hand over a chunk
        await asyncio.wait([producer])


def _read_outcome(producer: "asyncio.Task[None]") -> None:
    """Mark COPY's error read: when the reader is gone it matters to nobody, and left unread
    asyncio would log it as a crash (PostgreSQL's message with it)."""
    if not producer.cancelled():
        producer.exception()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
