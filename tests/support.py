"""Helpers shared by the tests: settings, databases, an app with its lifespan run."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from starlette.types import Receive, Scope, Send

from devreg.config import Settings


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


async def admin(server_url: URL, *statements: str) -> None:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def create_database(server_url: URL, name: str, *, template: str | None = None) -> URL:
    clone = f" TEMPLATE {template}" if template else ""
    await admin(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}{clone}"
    )
    return server_url.set(database=name)


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


def api_client(app: RunningApp) -> AsyncClient:
    return AsyncClient(transport=ASGITransport(app=app), base_url="http://devreg.test")


_DATABASE_VARIABLES = ("DATABASE_URL", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_HOST", "DB_PORT")


def devreg_environment(**settings: str) -> dict[str, str]:
    """The environment for a devreg process: this one's, minus database settings, plus these."""
    env = {k: v for k, v in os.environ.items() if k not in _DATABASE_VARIABLES}
    env.update(settings)
    return env


@contextmanager
def devreg_server(**settings: str) -> Iterator[str]:
    """A real `devreg serve` process; yields its base URL, stops it with Ctrl-C (SIGINT).

    Its output goes to a file: a pipe nobody reads would fill up and block the server.
    """
    port = free_port()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devreg", "serve", "--port", str(port)],
            env=devreg_environment(**settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_live(process, base_url, output)
            yield base_url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_live(process: subprocess.Popen[str], base_url: str, output: IO[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            raise AssertionError(f"devreg serve exited with {process.returncode}:\n{output.read()}")
        try:
            if httpx.get(f"{base_url}/livez", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("devreg serve did not come up within 60 s")


def run_devreg(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devreg", *args],
        env=devreg_environment(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
