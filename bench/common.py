"""What the benchmarks share: a throwaway PostgreSQL cluster and fresh, migrated databases on it."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devreg.config import Settings
from devreg.db import migrations
from devreg.db.embedded import EmbeddedCluster
from devreg.db.session import create_engine

# Throughput of a throwaway database, not its durability, is what the scale benchmark measures.
NOT_DURABLE = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'512MB'",
}


def settings_for(url: URL) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url.render_as_string(hide_password=False),
        migrate_on_start=False,
    )


@asynccontextmanager
async def server(port: int, server_settings: Mapping[str, str]) -> AsyncIterator[URL]:
    """A superuser URL to a PostgreSQL server: BENCH_DATABASE_URL's, or a throwaway cluster's
    (system binaries, a temporary directory, removed afterwards)."""
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        yield make_url(external).set(drivername="postgresql+asyncpg", database="postgres")
        return
    root = Path(tempfile.mkdtemp(prefix="devreg-bench-"))
    os.chmod(root, 0o755)  # noqa: S103 - as root, the postgres account must reach the cluster
    cluster = EmbeddedCluster(
        data_dir=root / "pg", port=port, server_settings=dict(server_settings)
    )
    await asyncio.to_thread(cluster.ensure_running)
    try:
        yield cluster.url("postgres")
    finally:
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(root, ignore_errors=True)


async def admin(server_url: URL, *statements: str) -> None:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def fresh_database(server_url: URL, name: str, *, migrate: bool = True) -> URL:
    await admin(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    url = server_url.set(database=name)
    if migrate:
        engine = create_engine(url, settings_for(url))
        try:
            await migrations.upgrade(engine)
        finally:
            await engine.dispose()
    return url


def ensure_installed(command: str) -> None:
    """`command`, installed from Debian's package of the same name when missing."""
    if shutil.which(command):
        return
    install = ["apt-get", "install", "-y", "-q", command]
    if subprocess.run(install, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
