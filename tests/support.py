"""Helpers shared by the tests: settings, databases, an app with its lifespan run, exports."""

import asyncio
import csv
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import asyncpg
import httpx
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import Executable
from starlette.types import ASGIApp, Receive, Scope, Send

from devreg.auth.authenticator import Authenticator
from devreg.config import Settings
from devreg.db import migrations
from devreg.db.session import SessionMaker, create_engine, create_sessionmaker
from devreg.errors import sqlstate_of

T = TypeVar("T")


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


@asynccontextmanager
async def one_connection(url: URL, **settings: object) -> AsyncIterator[SessionMaker]:
    """Sessions on an engine whose pool holds a single connection: each statement runs on the
    connection the one before it left behind."""
    engine = create_engine(url, make_settings(url, pool_size=1, max_overflow=0, **settings))
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def autocommit_rows(sessions: SessionMaker, statement: Executable) -> list[tuple[Any, ...]]:
    """The rows of a statement run through SQLAlchemy's engine in autocommit, as a request's
    lone statement once ran."""
    async with sessions.kw["bind"].connect() as connection:
        autocommitting = await connection.execution_options(isolation_level="AUTOCOMMIT")
        return [tuple(row) for row in await autocommitting.execute(statement)]


async def admin(server_url: URL, *statements: str) -> None:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def login_role(
    server_url: URL, database_url: URL, *, grant: str, limits: str = ""
) -> AsyncIterator[URL]:
    """`database_url` as a role of its own, granted `grant` on every table (and `limits`, such
    as `CONNECTION LIMIT 3`), dropped afterwards."""
    role = f"role_{secrets.token_hex(4)}"
    await admin(server_url, f"CREATE ROLE {role} LOGIN PASSWORD 'first' {limits}")
    await admin(database_url, f"GRANT {grant} ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        yield database_url.set(username=role, password="first")
    finally:
        await admin(database_url, f"DROP OWNED BY {role}")
        await admin(server_url, f"DROP ROLE {role}")


async def migrate(url: URL, *, down_to: str | None = None) -> None:
    """The database at `url` migrated to head, as devreg's start-up migrates it; or down to
    the revision `down_to` (`base`: no schema at all)."""
    engine = create_engine(url, make_settings(url))
    try:
        if down_to is None:
            await migrations.upgrade(engine)
        else:
            await migrations.downgrade(engine, down_to)
    finally:
        await engine.dispose()


# PostgreSQL's refusal of a locale its system lacks ("invalid locale name: ...").
_INVALID_LOCALE = "42809"


async def create_database(
    server_url: URL, name: str, *, template: str | None = None, encoding: str | None = None
) -> URL:
    """A database `name`, made afresh: a clone of `template`, or empty. An empty one is in
    `encoding` with the C locale, which any encoding can have; else in UTF8 ordering text as
    devreg's own cluster does (C.UTF-8, code point order), whatever a TEST_DATABASE_URL server's
    default: the tests expect Python's order ("A" before "a", which ICU's en-US reverses)."""
    await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if template:
        await admin(server_url, f"CREATE DATABASE {name} TEMPLATE {template}")
        return server_url.set(database=name)
    # Named here, not taken from the server's template0 (nor, from PostgreSQL 15, its ICU provider).
    provider = " LOCALE_PROVIDER libc" if await server_version(server_url) >= 150000 else ""
    locales = ["C"] if encoding else ["C.UTF-8", "C"]  # a server's system may lack C.UTF-8
    for locale in locales:
        try:
            await admin(
                server_url,
                f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding or 'UTF8'}'"
                f" LOCALE '{locale}'{provider}",
            )
        except DBAPIError as exc:
            # The next locale only for one this server's system lacks: a refusal for another
            # reason (out of connections, say) made the database in C all the same.
            if locale == locales[-1] or sqlstate_of(exc) != _INVALID_LOCALE:
                raise
        else:
            break
    return server_url.set(database=name)


async def server_version(server_url: URL) -> int:
    connection = await asyncpg_connection(server_url)
    try:
        return int(await connection.fetchval("SHOW server_version_num"))
    finally:
        await connection.close()


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


async def query(url: URL, sql: str, **parameters: object) -> list[dict[str, Any]]:
    """The rows of one query on a connection of its own: what another client sees."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text(sql), parameters)
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def devreg_backends(url: URL) -> set[int]:
    """The PostgreSQL backends devreg holds open on the database at `url`."""
    rows = await query(
        url,
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'devreg'",
    )
    return {row["pid"] for row in rows}


def forget_authentication(app: FastAPI) -> None:
    """What a restart does to the app's cache of tokens: a new authenticator, knowing none.
    (A test's tokens vanish with its transaction; what the app cached of them must too.)"""
    old: Authenticator = app.state.authenticator
    app.state.authenticator = Authenticator(
        old.mode, cache_ttl=old.cache_ttl, trusted_origins=old.trusted_origins
    )


def api_client(
    app: ASGIApp, peer: tuple[str, int] = ("127.0.0.1", 123), *, root_path: str = ""
) -> AsyncClient:
    """A client of the app, calling from `peer` (httpx's default address); a `root_path` is
    given as httpx gives it, in the scope's root_path alone (see served_under)."""
    transport = ASGITransport(app=app, client=peer, root_path=root_path)
    return AsyncClient(transport=transport, base_url="http://localhost")


def served_under(root_path: str, app: ASGIApp) -> ASGIApp:
    """`app` as uvicorn serves it with `--root-path`: the prefix in the scope's root_path and at
    the start of its path and raw_path, as the ASGI spec says (httpx's ASGITransport leaves the
    path without it)."""

    async def prefixed(scope: Scope, receive: Receive, send: Send) -> None:
        scope = {
            **scope,
            "root_path": root_path,
            "path": root_path + scope["path"],
            "raw_path": root_path.encode("ascii") + scope["raw_path"],
        }
        await app(scope, receive, send)

    return prefixed


# The checkout under test: its bench/, Makefile, sources.
CHECKOUT = Path(__file__).resolve().parents[1]

_DATABASE_VARIABLES = ("DATABASE_URL", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_HOST", "DB_PORT")


def devreg_environment(**settings: str) -> dict[str, str]:
    """The environment for a devreg process: this one's, minus database settings, plus these."""
    env = {k: v for k, v in os.environ.items() if k not in _DATABASE_VARIABLES}
    env.update(settings)
    return env


@dataclass
class DevregProcess:
    base_url: str
    process: "subprocess.Popen[str]"
    output: IO[str]

    def log(self) -> str:
        self.output.seek(0)
        return self.output.read()

    async def logs(self, text: str, *, times: int = 1) -> None:
        """Wait (up to 60 seconds) until the log holds `text` `times` times: "Application
        startup complete." once a worker, say."""
        deadline = time.monotonic() + 60
        while self.log().count(text) < times:
            assert time.monotonic() < deadline, self.log()
            await asyncio.sleep(0.1)

    def errors_logged(self) -> list[dict[str, Any]]:
        """The log's records at level ERROR or above."""
        return self.logged("ERROR", "CRITICAL")

    def logged(self, *levels: str) -> list[dict[str, Any]]:
        """The log's records at these levels (the log is JSON, a record a line)."""
        records = [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]
        return [record for record in records if record.get("level") in levels]

    def request_lines(self, *request_ids: str) -> list[dict[str, Any]]:
        """The request lines of these requests (by X-Request-ID), in order, once all are
        logged (within 10 seconds): a request's line is written after its answer is sent."""
        deadline = time.monotonic() + 10
        while True:
            lines = {
                line["request_id"]: line
                for line in self.logged("INFO")
                if line["message"] == "request" and line.get("request_id") in request_ids
            }
            if len(lines) == len(request_ids):
                return [lines[request_id] for request_id in request_ids]
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)


@contextmanager
def devreg_process(
    cwd: Path | None = None, ignoring: Sequence[signal.Signals] = (), **settings: str
) -> Iterator[DevregProcess]:
    """A real `devreg serve` process, run in `cwd` (where it reads a `.env`) with the signals
    `ignoring` ignored (as `nohup` leaves SIGHUP) and the others at their defaults, whatever
    the suite was started with; stopped with Ctrl-C (SIGINT) if it is still running.

    One worker unless `WORKERS` says otherwise, whatever the machine's CPUs; yielded once each
    has started (one answering is not enough: another starting still would fail a test that
    then changes the database under it). Its output goes to a file opened for appending (the
    server's writes land at its end, whatever this process reads): a pipe nobody reads would
    fill up and block the server.
    """
    port = free_port()
    workers = int(settings.get("WORKERS", "1"))
    with tempfile.TemporaryFile("a+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devreg", "serve", "--port", str(port)],
            env=devreg_environment(**{"WORKERS": "1", **settings}),
            cwd=cwd,
            preexec_fn=lambda: _set_signals(ignoring),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_started(process, base_url, output, workers)
            yield DevregProcess(base_url, process, output)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def read_by_the_server(writer: asyncio.StreamWriter) -> None:
    """Once the server at the other end of `writer` has read all that was written on it (within
    60 seconds): a request's head read, the server has the request in hand (a stop lets it
    finish) and has passed it to the app. (A fixed pause was too short on a busy machine.)"""
    own_port = writer.get_extra_info("sockname")[1]
    server_port = writer.get_extra_info("peername")[1]
    deadline = time.monotonic() + 60
    while writer.transport.get_write_buffer_size() or _unread_by(server_port, own_port):
        assert time.monotonic() < deadline, "the server never read what was sent"
        await asyncio.sleep(0.05)


def _unread_by(server_port: int, client_port: int) -> int:
    """The bytes the server's end of a loopback connection has received but not read yet (none
    once it has closed it)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, _, queues = line.split()[1:5]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            server_port,
            client_port,
        ):
            return int(queues.split(":")[1], 16)
    return 0


@contextmanager
def devreg_server(cwd: Path | None = None, **settings: str) -> Iterator[str]:
    """A real `devreg serve` process (see devreg_process); yields its base URL."""
    with devreg_process(cwd, **settings) as server:
        yield server.base_url


def _set_signals(ignoring: Sequence[signal.Signals]) -> None:
    for ending in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(ending, signal.SIG_IGN if ending in ignoring else signal.SIG_DFL)


def _wait_until_started(
    process: subprocess.Popen[str], base_url: str, output: IO[str], workers: int
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        output.seek(0)
        log = output.read()
        if process.poll() is not None:
            raise AssertionError(f"devreg serve exited with {process.returncode}:\n{log}")
        try:
            live = httpx.get(f"{base_url}/livez", timeout=1).status_code == 200
        except httpx.TransportError:
            live = False
        if live and log.count("Application startup complete.") >= workers:
            return
        time.sleep(0.1)
    output.seek(0)
    raise AssertionError(f"devreg serve did not come up within 60 s:\n{output.read()}")


async def set_revision(url: URL, revision: str) -> None:
    """Record the database as migrated to `revision`, as a release that knows it would."""
    await admin(url, f"UPDATE alembic_version SET version_num = '{revision}'")


def started_devreg(*args: str, **settings: str) -> subprocess.Popen[str]:
    """A devreg command, started (its output captured) and left running."""
    return subprocess.Popen(
        [sys.executable, "-m", "devreg", *args],
        env=devreg_environment(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_devreg(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devreg", *args],
        env=devreg_environment(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- exports (HTTP and CLI) ----------------------------------------------------------------

EXPORT_HEADER = (
    "id,name,serial_number,model,status,owner_id,tags,attributes,last_seen_at,created_at,"
    "updated_at,version"
)
EXPORT_COLUMNS = tuple(EXPORT_HEADER.split(","))
_INTEGER_COLUMNS = ("id", "owner_id", "version")
_JSON_COLUMNS = ("tags", "attributes")
_TIME_COLUMNS = ("last_seen_at", "created_at", "updated_at")


def _with_times(record: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as datetimes: the API and PostgreSQL spell the same instant differently."""
    return {
        key: datetime.fromisoformat(value) if key in _TIME_COLUMNS and value else value
        for key, value in record.items()
    }


def export_view(device: dict[str, Any]) -> dict[str, Any]:
    """What an export holds for `device` as the API shows it, in the form the parsers give."""
    return _with_times({column: device[column] for column in EXPORT_COLUMNS})


def csv_records(text: str) -> list[dict[str, Any]]:
    """The rows of a CSV export, typed like `export_view` (an empty field is a missing value).

    Checks the header row is exactly EXPORT_HEADER.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    assert next(reader) == list(EXPORT_COLUMNS)
    records = []
    for row in reader:
        assert len(row) == len(EXPORT_COLUMNS), row
        record: dict[str, Any] = {}
        for column, value in zip(EXPORT_COLUMNS, row, strict=True):
            if value == "":
                record[column] = None
            elif column in _INTEGER_COLUMNS:
                record[column] = int(value)
            elif column in _JSON_COLUMNS:
                record[column] = json.loads(value)
            else:
                record[column] = value
        records.append(_with_times(record))
    return records


def ndjson_records(text: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON export, one a line (every line ends with a newline)."""
    assert text == "" or text.endswith("\n")
    records = [json.loads(line) for line in text.split("\n")[:-1]]
    assert all(tuple(record) == EXPORT_COLUMNS for record in records)
    return [_with_times(record) for record in records]


EXPORT_PARSERS = {"csv": csv_records, "ndjson": ndjson_records}


async def asyncpg_connection(url: URL) -> asyncpg.Connection:
    """A plain connection of the test's own, beside the app's (to hold locks, say)."""
    return await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))


# How long a lock may take to be waited for: a real process's start-up may come first (a
# server's worker, a command), which takes seconds on a busy machine.
_LOCK_WAIT_DEADLINE = 60


async def waiting_for_lock_of(url: URL, waiter: asyncpg.Connection) -> None:
    """Once `waiter`'s session waits for a lock (within 60 seconds)."""
    pid = waiter.get_server_pid()
    deadline = time.monotonic() + _LOCK_WAIT_DEADLINE
    while time.monotonic() < deadline:
        rows = await query(
            url, f"SELECT count(*) AS n FROM pg_locks WHERE pid = {pid} AND NOT granted"
        )
        if rows[0]["n"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("it never came to wait for a lock")


async def user_deleted_while(
    url: URL, user_id: int, request: "asyncio.Task[T]", go_on: asyncio.Event
) -> tuple[T, str]:
    """The answer to `request` (paused until `go_on`) and the status of the user's plain
    deletion, sent by a session of its own while the request holds what it holds, and let go
    on once the deletion waits for it."""
    deleter = await asyncpg_connection(url)
    try:
        deleting = asyncio.create_task(deleter.execute("DELETE FROM users WHERE id = $1", user_id))
        await waiting_for_lock_of(url, deleter)
        go_on.set()
        return await request, await deleting
    finally:
        await deleter.close()


async def waiting_for_a_lock(connection: asyncpg.Connection) -> None:
    """Return once another session waits for a lock `connection` holds (within 60 seconds).
    (pg_locks, not pg_stat_activity, which a transaction reads only once.)"""
    deadline = time.monotonic() + _LOCK_WAIT_DEADLINE
    while time.monotonic() < deadline:
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_locks "
            "WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no session came to wait for a lock")
