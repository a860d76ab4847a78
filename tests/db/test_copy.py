"""COPY out of PostgreSQL in bounded chunks (db.copy), as the export streams it."""

import asyncio
import gc
import logging
import time

import pytest
from sqlalchemy import literal_column, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from devreg.db.copy import copy_out
from devreg.db.session import create_engine
from tests.support import make_settings


async def test_a_failure_after_the_reader_stopped_is_not_left_unread(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    """The client went away after the first chunk, and COPY failed meanwhile: its error no
    longer matters, but left in its task asyncio logged it as an ERROR with a traceback."""
    rows_then_a_failure = select(
        literal_column("CASE WHEN g < 2000 THEN repeat('x', 1000) ELSE (1 / (g - g))::text END")
    ).select_from(text("generate_series(1, 3000) AS g"))
    async with sessionmaker() as session:
        chunks = copy_out(session, rows_then_a_failure, format="csv")
        first = await anext(chunks)
        await asyncio.sleep(0.2)  # the COPY reaches the failing row
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            await chunks.aclose()  # as Starlette does when the client is gone
            del chunks
            gc.collect()
            await asyncio.sleep(0)

    assert first.startswith(b"xxx")
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_a_reader_that_stops_while_chunks_wait_leaves_a_usable_pool(
    database_url: URL,
) -> None:
    """The client went away while COPY had filled the chunks in flight: closing the export hung
    (the cancelled producer waited forever to say it had ended). Its connection, COPY cut off,
    must then serve the next statement."""
    engine = create_engine(database_url, make_settings(database_url, pool_size=1, max_overflow=0))
    many_rows = select(literal_column("repeat('x', 1000)")).select_from(
        text("generate_series(1, 100000) AS g")
    )
    try:
        async with AsyncSession(engine) as session:  # rolled back, as a streamed export's
            chunks = copy_out(session, many_rows, format="csv")
            await anext(chunks)
            await asyncio.sleep(0.3)  # COPY fills the chunks in flight, then waits
            closing_began = time.monotonic()
            await asyncio.wait_for(chunks.aclose(), timeout=5)  # as when the client is gone
            closed_after = time.monotonic() - closing_began
            await session.rollback()
        async with AsyncSession(engine) as session:
            assert await session.scalar(select(literal_column("1"))) == 1
    finally:
        await engine.dispose()
    assert closed_after < 2  # it waited until cancelled (by wait_for here, after 5 s)
