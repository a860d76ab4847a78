"""Fixtures: one throwaway PostgreSQL cluster per run (per xdist worker), migrated once; every
test isolated.

- `client` drives the app over ASGI; each test runs inside an outer transaction that is rolled
  back at the end (the app's own commits only release savepoints).
- `committed_database_url` gives a test a fresh database of its own (cloned from the migrated
  template) for what needs real commits: the CLI, a real uvicorn process, concurrency.

Set TEST_DATABASE_URL (a superuser URL) to use an existing server instead of a throwaway one.
"""

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
)

from devreg.app import create_app
from devreg.db.embedded import EmbeddedCluster
from tests.support import (
    RunningApp,
    admin,
    api_client,
    create_database,
    forget_authentication,
    free_port,
    make_settings,
    migrate,
    running,
)

# Under pytest-xdist each worker has databases of its own, even on one TEST_DATABASE_URL server.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEMPLATE_DATABASE = f"devreg_template{_WORKER}"
TEST_DATABASE = f"devreg_test{_WORKER}"


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


@pytest.fixture(scope="session")
async def template_url(server_url: URL) -> URL:
    """A database migrated to head once per run; tests clone it and never connect to it."""
    url = await create_database(server_url, TEMPLATE_DATABASE)
    await migrate(url)
    return url


@pytest.fixture(scope="session")
async def database_url(server_url: URL, template_url: URL) -> URL:
    return await create_database(server_url, TEST_DATABASE, template=TEMPLATE_DATABASE)


@pytest.fixture
async def committed_database_url(server_url: URL, template_url: URL) -> AsyncIterator[URL]:
    name = f"devreg_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, template=TEMPLATE_DATABASE)
    yield url
    await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def latin1_database_url(server_url: URL) -> AsyncIterator[URL]:
    """A migrated database of the test's own in LATIN1, which lacks most of Unicode."""
    name = f"devreg_latin1_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, encoding="LATIN1")
    await migrate(url)
    yield url
    await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
async def app_in_test_transaction(
    running_app: RunningApp, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[RunningApp]:
    """The app, every request's session running in this test's transaction, rolled back when
    the test ends."""
    forget_authentication(running_app.app)
    try:
        yield RunningApp(running_app.app, {**running_app.state, "sessionmaker": sessionmaker})
    finally:
        forget_authentication(running_app.app)


@pytest.fixture
async def client(app_in_test_transaction: RunningApp) -> AsyncIterator[AsyncClient]:
    async with api_client(app_in_test_transaction) as client:
        yield client


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
