"""Listings' statements run straight on asyncpg, compiled once per structure (db.driver)."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Integer, func, select
from sqlalchemy.engine import URL

from devreg.db.driver import fetch_all
from devreg.db.keyset import any_of
from devreg.db.session import SessionMaker, session_scope
from tests.support import one_connection

N = func.generate_series(1, 4, type_=Integer).column_valued("n")


@pytest.fixture
async def sessionmaker(committed_database_url: URL) -> AsyncIterator[SessionMaker]:
    async with one_connection(committed_database_url) as sessions:
        yield sessions


async def numbers(sessionmaker: SessionMaker, *wanted: int) -> list[int]:
    async with session_scope(sessionmaker, begin=False) as work:
        rows = await fetch_all(work, select(N).where(*any_of(N, wanted)).order_by(N))
    return [row[0] for row in rows]


async def test_one_structure_many_values(sessionmaker: SessionMaker) -> None:
    assert await numbers(sessionmaker, 2, 3) == [2, 3]
    assert await numbers(sessionmaker, 1, 4) == [1, 4]
    assert await numbers(sessionmaker, 1, 3, 4) == [1, 3, 4]
    assert await numbers(sessionmaker, 4) == [4]
    assert await numbers(sessionmaker) == [1, 2, 3, 4]


async def test_an_in_list_of_values_is_refused_not_cached_by_its_length(
    sessionmaker: SessionMaker,
) -> None:
    async with session_scope(sessionmaker, begin=False) as work:
        with pytest.raises(TypeError):
            await fetch_all(work, select(N).where(N.in_([1, 2])))
