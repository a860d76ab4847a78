"""One unit of work: everything a session scope wrote is committed together, or not at all."""

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL

from devreg.auth.principal import FULL_ACCESS
from devreg.db.server import check_connection
from devreg.db.session import create_engine, create_sessionmaker, session_scope
from devreg.devices import service as devices_service
from devreg.devices.models import Device
from devreg.devices.schemas import DeviceCreate
from tests.support import make_settings


class Interrupted(Exception):
    pass


async def count_devices(url: URL) -> int:
    engine = create_engine(url, make_settings(url))
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(Device)) or 0)
    finally:
        await engine.dispose()


async def test_an_error_after_writes_rolls_all_of_them_back(committed_database_url: URL) -> None:
    engine = create_engine(committed_database_url, make_settings(committed_database_url))
    sessionmaker = create_sessionmaker(engine)

    async def register_two_then_fail() -> None:
        async with session_scope(sessionmaker) as session:
            await devices_service.register_device(
                session, data=DeviceCreate(name="a"), principal=FULL_ACCESS
            )
            await devices_service.register_device(
                session, data=DeviceCreate(name="b"), principal=FULL_ACCESS
            )
            raise Interrupted

    try:
        with pytest.raises(Interrupted):
            await register_two_then_fail()
        assert await count_devices(committed_database_url) == 0

        async with session_scope(sessionmaker) as session:
            await devices_service.register_device(
                session, data=DeviceCreate(name="a"), principal=FULL_ACCESS
            )
        assert await count_devices(committed_database_url) == 1
    finally:
        await engine.dispose()


async def test_libpq_options_in_the_url_reach_the_connection(committed_database_url: URL) -> None:
    """DATABASE_URL may carry libpq's options, as a hosting provider's URL does."""
    with_options = committed_database_url.set(
        query={
            "application_name": "fleet-sync",
            "options": "-c search_path=elsewhere,public",
            "target_session_attrs": "read-write",
            "sslmode": "disable",
            "connect_timeout": "7",
            "keepalives": "1",
            "channel_binding": "prefer",
            "fallback_application_name": "not-this-one",
        }
    )
    settings = make_settings(with_options)
    url = settings.external_database_url()
    assert url is not None
    engine = create_engine(url, settings)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW application_name")) == "fleet-sync"
            assert await connection.scalar(text("SHOW search_path")) == "elsewhere,public"
            assert await connection.scalar(text("SHOW TimeZone")) == "UTC"  # devreg's own
    finally:
        await engine.dispose()
    assert settings.db_connect_timeout == 7


async def test_asyncpg_numbers_in_the_url_reach_the_connection(committed_database_url: URL) -> None:
    """asyncpg's own options, written as text in a URL: a statement cache of size "0" was
    compared with numbers, and devreg would not start ("invalid database URL: '<' not
    supported between instances of 'str' and 'int'")."""
    with_options = committed_database_url.set(
        query={"statement_cache_size": "0", "prepared_statement_cache_size": "0"}
    )
    settings = make_settings(with_options)
    url = settings.external_database_url()
    assert url is not None
    await check_connection(url, connect_timeout=5)
    engine = create_engine(url, settings)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
            asyncpg_connection = (await connection.get_raw_connection()).driver_connection
            assert asyncpg_connection is not None
            await asyncpg_connection.fetchval("SELECT 2")
            assert (
                await asyncpg_connection.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql"
                )
                == 0
            )  # none kept: asyncpg's cache is off
    finally:
        await engine.dispose()
