"""A value asyncpg cannot encode (here an integer beyond PostgreSQL's `integer`) is the client's
error, a 422, and leaves no connection half-way through a statement: on the hot path asyncpg
has sent the statement's first messages, and the server would keep that connection in an open
transaction (its locks held, its `now()` frozen) until the connection's next statement."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Integer, bindparam, func, literal_column, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from devreg.db.driver import DriverStatement, fetch_all, fetch_row
from devreg.db.session import SessionMaker, session_scope
from devreg.errors import InvalidInput, database_problem
from tests.support import autocommit_rows, one_connection

TOO_LARGE = 2**31
INTEGER = select(bindparam("n", type_=Integer).label("n"))
# Whether the statement's transaction is its own, not one that began before the pause.
PAUSE = 0.2
RECENT = literal_column("interval '0.1s'")
FRESH = select((func.clock_timestamp() - func.now() < RECENT).label("fresh"))


@pytest.fixture
async def sessionmaker(committed_database_url: URL) -> AsyncIterator[SessionMaker]:
    async with one_connection(committed_database_url) as sessions:
        yield sessions


async def test_on_the_hot_path(sessionmaker: SessionMaker) -> None:
    integer, fresh = DriverStatement.compile(INTEGER), DriverStatement.compile(FRESH)
    async with session_scope(sessionmaker, begin=False) as work:
        # A statement the connection has not prepared yet, on a connection that has served one.
        assert dict(await fetch_row(work, fresh, {}, {}) or {}) == {"fresh": True}
        with pytest.raises(InvalidInput):
            await fetch_row(work, integer, {"n": TOO_LARGE}, {})
        await asyncio.sleep(PAUSE)
        after = await fetch_row(work, fresh, {}, {})
    assert dict(after or {}) == {"fresh": True}


async def test_on_a_listing_s_path(sessionmaker: SessionMaker) -> None:
    async with session_scope(sessionmaker, begin=False) as work:
        assert [tuple(row) for row in await fetch_all(work, FRESH)] == [(True,)]
        with pytest.raises(InvalidInput):
            await fetch_all(work, INTEGER.params(n=TOO_LARGE))
        await asyncio.sleep(PAUSE)
        after = await fetch_all(work, FRESH)
    assert [tuple(row) for row in after] == [(True,)]


async def test_through_sqlalchemy(sessionmaker: SessionMaker) -> None:
    assert await autocommit_rows(sessionmaker, FRESH) == [(True,)]
    with pytest.raises(DBAPIError) as refused:
        await autocommit_rows(sessionmaker, INTEGER.params(n=TOO_LARGE))
    await asyncio.sleep(PAUSE)
    after = await autocommit_rows(sessionmaker, FRESH)
    assert isinstance(database_problem(refused.value), InvalidInput)
    assert after == [(True,)]
