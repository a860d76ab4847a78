"""A real uvicorn process: start-up errors, and a burst far above the pool."""

import asyncio
from collections import Counter

import httpx
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devreg.db import migrations
from tests.support import create_database, devreg_server, run_devreg


def url_setting(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def test_burst_of_200_requests_on_a_pool_of_5(committed_database_url: URL) -> None:
    with devreg_server(
        DATABASE_URL=url_setting(committed_database_url), POOL_SIZE="5", MAX_OVERFLOW="0"
    ) as base_url:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

            async def one(index: int) -> int:
                if index % 2:
                    response = await client.post("/api/v1/devices", json={"name": f"d{index}"})
                else:
                    response = await client.get("/api/v1/devices", params={"limit": 10})
                return response.status_code

            statuses = Counter(await asyncio.gather(*(one(i) for i in range(200))))
            listed = await client.get("/api/v1/devices", params={"limit": 1000})

    assert sum(statuses.values()) == 200
    assert statuses == Counter({200: 100, 201: 100})
    assert len(listed.json()["items"]) == 100


def test_wrong_password_at_start_is_one_clear_line(committed_database_url: URL) -> None:
    wrong = committed_database_url.set(password="hunter2-wrong")
    result = run_devreg("serve", "--port", "1", DATABASE_URL=url_setting(wrong))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"devreg: wrong password: PostgreSQL at 127.0.0.1:{wrong.port} rejected the password "
        f"for user {wrong.username!r}"
    ]
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_tutorial_settings_compose_the_url(committed_database_url: URL) -> None:
    url = committed_database_url
    with devreg_server(
        DB_USER=url.username or "",
        DB_PASSWORD=url.password or "",
        DB_HOST=url.host or "",
        DB_PORT=str(url.port),
        DB_NAME=url.database or "",
    ) as base_url:
        ready = httpx.get(f"{base_url}/api/v1/health-check/db")
    assert ready.json() == {"status": "ok", "db": "reachable"}


async def test_two_workers_on_an_empty_database_migrate_once(server_url: URL) -> None:
    url = await create_database(server_url, "devreg_two_workers")
    with devreg_server(DATABASE_URL=url_setting(url), WORKERS="2") as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            created = await client.post("/api/v1/devices", json={"name": "after-migration"})
    assert created.status_code == 201
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            versions = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).all()
    finally:
        await engine.dispose()
    assert [row[0] for row in versions] == [migrations.head_revision()]
