"""STATEMENT_TIMEOUT: a statement running past it is cancelled, which a client sees as a 503,
and its connection goes back to the pool usable. Migrations are exempt."""

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from devreg.db import migrations
from devreg.db.driver import DriverStatement, fetch_all, fetch_row
from devreg.db.session import SessionMaker, create_engine, session_scope
from devreg.errors import StatementTimedOut, database_problem
from tests.support import (
    admin,
    autocommit_rows,
    create_database,
    make_settings,
    one_connection,
)

SLOW = select(func.pg_sleep(bindparam("seconds", 2)))
BACKEND = select(func.pg_backend_pid().label("pid"))


@pytest.fixture
async def sessionmaker(committed_database_url: URL) -> AsyncIterator[SessionMaker]:
    async with one_connection(committed_database_url, statement_timeout=0.2) as sessions:
        yield sessions


async def test_a_hot_path_statement_past_the_timeout(sessionmaker: SessionMaker) -> None:
    backend = DriverStatement.compile(BACKEND)
    async with session_scope(sessionmaker, begin=False) as work:
        before = await fetch_row(work, backend, {}, {})
        with pytest.raises(StatementTimedOut):
            await fetch_row(work, DriverStatement.compile(SLOW), {"seconds": 2}, {})
        after = await fetch_row(work, backend, {}, {})
    assert before == after  # the pool's one connection, still working


async def test_a_listing_statement_past_the_timeout(sessionmaker: SessionMaker) -> None:
    async with session_scope(sessionmaker, begin=False) as work:
        before = await fetch_all(work, BACKEND)
        with pytest.raises(StatementTimedOut):
            await fetch_all(work, SLOW)
        after = await fetch_all(work, BACKEND)
    assert before == after


async def test_a_sqlalchemy_statement_past_the_timeout(sessionmaker: SessionMaker) -> None:
    before = await autocommit_rows(sessionmaker, BACKEND)
    with pytest.raises(DBAPIError) as cancelled:
        await autocommit_rows(sessionmaker, SLOW)
    after = await autocommit_rows(sessionmaker, BACKEND)
    assert isinstance(database_problem(cancelled.value), StatementTimedOut)
    assert before == after


async def test_migrations_run_without_the_timeout(server_url: URL) -> None:
    """The second migration indexes a table this test fills first: far past a 50 ms timeout."""
    name = f"devreg_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    unlimited = create_engine(url, make_settings(url))
    limited = create_engine(url, make_settings(url, statement_timeout=0.05))
    try:
        await migrations.upgrade(unlimited, "+1")
        await admin(
            url,
            "INSERT INTO devices (name, serial_number, model) SELECT 'device ' || g, "
            "'SN-' || g, 'model ' || g % 100 FROM generate_series(1, 200000) AS g",
        )
        await migrations.upgrade(limited)
        assert await migrations.current_revision(limited) == migrations.head_revision()
    finally:
        await unlimited.dispose()
        await limited.dispose()
        await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
