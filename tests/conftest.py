"""Fixtures: one throwaway PostgreSQL cluster per run, migrated once; every test isolated.

- `client` drives the app over ASGI; each test runs inside an outer transaction that is rolled
  back at the end (the app's own commits only release savepoints).
- `committed_database_url` gives a test a fresh database of its own (cloned from the migrated
  template) for what needs real commits: the CLI, a real uvicorn process, concurrency.

Set TEST_DATABASE_URL (a superuser URL) to use an existing server instead of a throwaway one.
"""

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from starlette.types import Receive, Scope, Send

from devreg.app import create_app
from devreg.config import Settings
from devreg.db import migrations
from devreg.db.embedded import EmbeddedCluster
from devreg.db.session import create_engine, get_session, session_scope

TEMPLATE_DATABASE = "devreg_template"
TEST_DATABASE = "devreg_test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def make_settings(url: URL, **overrides: object) -> Settings:
    """Settings for a test: only what the test says, nothing from the environment or `.env`."""
    values: dict[str, object] = {
        "database_url": url.render_as_string(hide_password=False),
        "migrate_on_start": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A superuser URL (database `postgres`) on the server the suite may create databases on."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield make_url(external).set(drivername="postgresql+asyncpg", database="postgres")
        return
    root = Path(tempfile.mkdtemp(prefix="devreg-test-"))
    root.chmod(0o755)  # the postgres account must reach the data directory inside
    cluster = EmbeddedCluster(
        data_dir=root / "pg",
        port=free_port(),
        server_settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    cluster.ensure_running()
    try:
        yield cluster.url("postgres")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _admin(server_url: URL, *statements: str) -> None:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def create_database(server_url: URL, name: str, *, template: str | None = None) -> URL:
    clone = f" TEMPLATE {template}" if template else ""
    await _admin(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}{clone}"
    )
    return server_url.set(database=name)


@pytest.fixture(scope="session")
async def template_url(server_url: URL) -> URL:
    """A database migrated to head once per run; tests clone it and never connect to it."""
    url = await create_database(server_url, TEMPLATE_DATABASE)
    engine = create_engine(url, make_settings(url))
    try:
        await migrations.upgrade(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture(scope="session")
async def database_url(server_url: URL, template_url: URL) -> URL:
    return await create_database(server_url, TEST_DATABASE, template=TEMPLATE_DATABASE)


@pytest.fixture
async def committed_database_url(server_url: URL, template_url: URL) -> AsyncIterator[URL]:
    name = f"devreg_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, template=TEMPLATE_DATABASE)
    yield url
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class RunningApp:
    """An app whose lifespan has run; `state` is what every request sees as request.state."""

    app: FastAPI
    state: dict[str, Any]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = self.state
        await self.app(scope, receive, send)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[RunningApp]:
    async with app.router.lifespan_context(app) as state:
        yield RunningApp(app, dict(state or {}))


@pytest.fixture(scope="session")
async def running_app(database_url: URL) -> AsyncIterator[RunningApp]:
    async with running(create_app(make_settings(database_url))) as app:
        yield app


@pytest.fixture
async def connection(running_app: RunningApp) -> AsyncIterator[AsyncConnection]:
    """This test's connection, inside a transaction that is rolled back when the test ends."""
    async with running_app.state["engine"].connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=connection,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )


@pytest.fixture
async def client(
    running_app: RunningApp, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncClient]:
    async def session_in_test_transaction() -> AsyncIterator[AsyncSession]:
        async with session_scope(sessionmaker) as session:
            yield session

    overrides = running_app.app.dependency_overrides
    overrides[get_session] = session_in_test_transaction
    try:
        async with api_client(running_app) as client:
            yield client
    finally:
        overrides.clear()


def api_client(app: RunningApp) -> AsyncClient:
    return AsyncClient(transport=ASGITransport(app=app), base_url="http://devreg.test")


class StatementLog(list[str]):
    """The SQL statements a test's connection ran, savepoint bookkeeping left out."""

    def reset(self) -> None:
        self.clear()


@pytest.fixture
def statements(connection: AsyncConnection) -> Iterator[StatementLog]:
    log = StatementLog()

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            log.append(statement)

    event.listen(connection.sync_connection, "before_cursor_execute", record)
    yield log
    event.remove(connection.sync_connection, "before_cursor_execute", record)
