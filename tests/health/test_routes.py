"""Probes: liveness never touches PostgreSQL; readiness says whether it can be reached."""

import time
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from devreg.db.session import create_engine
from tests.support import RunningApp, api_client, free_port

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

    async def test_database_unreachable_returns_503_quickly(
        self, unreachable_client: AsyncClient, path: str
    ) -> None:
        started = time.monotonic()
        response = await unreachable_client.get(path)
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert response.json() == {"status": "error", "db": "unreachable"}
        assert elapsed < UNREACHABLE_ANSWER_SECONDS
