"""COPY out of PostgreSQL in bounded chunks (db.copy), as the export streams it."""

import asyncio
import gc
import logging

import pytest
from sqlalchemy import literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from devreg.db.copy import copy_out


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
