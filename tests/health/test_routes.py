"""Probes: liveness never touches PostgreSQL; readiness says whether it can be reached, and
whether its schema is migrated."""

import logging
import time
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.db import migrations
from devreg.db.session import create_engine
from tests.support import (
    RunningApp,
    api_client,
    free_port,
    make_settings,
    running,
    set_revision,
)

READINESS_PATHS = ["/readyz", "/api/v1/health-check/db"]
UNREACHABLE_ANSWER_SECONDS = 5


@pytest.fixture
async def healthy_client(running_app: RunningApp) -> AsyncIterator[AsyncClient]:
    async with api_client(running_app) as client:
        yield client


@pytest.fixture
async def unreachable_client(running_app: RunningApp) -> AsyncIterator[AsyncClient]:
    """The app with its engine pointed at a port nothing listens on."""
    url = running_app.state["engine"].url.set(host="127.0.0.1", port=free_port())
    engine = create_engine(url, running_app.app.state.settings)
    try:
        async with api_client(
            RunningApp(running_app.app, {**running_app.state, "engine": engine})
        ) as client:
            yield client
    finally:
        await engine.dispose()


class TestLiveness:
    async def test_running_app_returns_ok(self, healthy_client: AsyncClient) -> None:
        response = await healthy_client.get("/livez")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_database_unreachable_still_returns_ok(
        self, unreachable_client: AsyncClient
    ) -> None:
        response = await unreachable_client.get("/livez")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", READINESS_PATHS)
class TestReadiness:
    async def test_database_reachable_returns_ok(
        self, healthy_client: AsyncClient, path: str
    ) -> None:
        response = await healthy_client.get(path)

        assert response.status_code == 200
        assert response.json() == {"status": "ok", "db": "reachable"}

    async def test_a_probe_logs_nothing_but_its_request_line(
        self, healthy_client: AsyncClient, path: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each probe logged two lines of Alembic's at INFO ("Context impl PostgresqlImpl.",
        "Will assume transactional DDL.") beside its request line."""
        with caplog.at_level(logging.DEBUG):
            assert (await healthy_client.get(path)).status_code == 200

        server_side = [r for r in caplog.records if r.name != "httpx"]  # the test's client
        assert [(record.name, record.getMessage()) for record in server_side] == [
            ("devreg.request", "request")
        ]

    async def test_database_unreachable_returns_503_quickly(
        self, unreachable_client: AsyncClient, path: str
    ) -> None:
        started = time.monotonic()
        response = await unreachable_client.get(path)
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert response.json() == {"status": "error", "db": "unreachable"}
        assert elapsed < UNREACHABLE_ANSWER_SECONDS

    @pytest.mark.parametrize("revision", ["-1", "base"], ids=["behind", "never-migrated"])
    async def test_database_behind_this_release_is_not_ready(
        self, committed_database_url: URL, path: str, revision: str
    ) -> None:
        """MIGRATE_ON_START=false and no `devreg db upgrade` yet: every request that needs the
        schema is a 503, and readiness said ok."""
        await _migrate_to(committed_database_url, revision)

        assert await _readiness(committed_database_url, path) == (
            503,
            {"status": "error", "db": "not migrated"},
        )

    async def test_database_at_a_newer_releases_revision_is_ready(
        self, committed_database_url: URL, path: str
    ) -> None:
        """A release rolled back past an upgrade serves the newer schema; it cannot judge it."""
        await set_revision(committed_database_url, "f00d")

        assert await _readiness(committed_database_url, path) == (
            200,
            {"status": "ok", "db": "reachable"},
        )


async def _migrate_to(url: URL, revision: str) -> None:
    engine = create_engine(url, make_settings(url))
    try:
        await migrations.downgrade(engine, revision)
    finally:
        await engine.dispose()


async def _readiness(url: URL, path: str) -> tuple[int, object]:
    app = create_app(make_settings(url, migrate_on_start=False, auth="off"))
    async with running(app) as started, api_client(started) as client:
        response = await client.get(path)
    return response.status_code, response.json()
