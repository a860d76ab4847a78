"""Talking to the PostgreSQL server itself: reachability, clear start-up errors, databases."""

import asyncio
import contextlib
import getpass
import os
import socket
from collections.abc import Iterator
from typing import Literal

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from devreg.config import driver_connect_args, dsn_options
from devreg.db import migrations


class DatabaseConnectError(Exception):
    """PostgreSQL could not be reached at start-up; the message is one line, with no password."""


class InvalidDatabaseUrl(DatabaseConnectError):
    """The URL names no possible connection (a port beyond 65535, an option the driver lacks)."""


class DatabaseUnreachable(DatabaseConnectError):
    """Nothing answered at the URL's address (or it is starting or stopping): it may yet, unlike
    a wrong password or a missing database."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        driver_error = getattr(current, "orig", None)
        current = current.__cause__ or current.__context__ or driver_error


def _connection_part(url: URL, name: str, given: object, default: object) -> str:
    """What the driver connects with: the URL's query (`?host=`, `?port=`, `?user=`) overrides
    its authority."""
    value = url.query.get(name) or given or default
    if isinstance(value, tuple):  # a query parameter given more than once
        return ",".join(value)
    return str(value)


def _user(url: URL) -> str:
    # Without one, asyncpg connects as PGUSER, or else as the user running devreg.
    return _connection_part(
        url, "user", url.username, os.environ.get("PGUSER") or getpass.getuser()
    )


def _host(url: URL) -> str:
    return _connection_part(url, "host", url.host, "localhost")


def _address(url: URL) -> str:
    return f"{_host(url)}:{_connection_part(url, 'port', url.port, 5432)}"


def _database(url: URL, user: str) -> str:
    # Without one, the user's own.
    return _connection_part(url, "database", url.database, user)


def describe_database(url: URL) -> str:
    """The database at `url` as the driver connects to it (`host:port/name as user 'u'`),
    without the password."""
    user = _user(url)
    return f"{_address(url)}/{_database(url, user)} as user {user!r}"


def describe_connect_failure(exc: BaseException, url: URL) -> str:
    return _diagnosis(exc, url)[0]


def gone_away(exc: BaseException, url: URL) -> str | None:
    """Why a connection failed, if that may pass (the server restarting, failing over, away
    for a while): what a start-up that found the server a moment before waits out. Not a
    server too full for the pool (the pool does not fit: a misconfiguration), nor any failure
    no wait mends."""
    if no_room_for_the_pool(exc, url) is not None:
        return None
    reason, transient = _diagnosis(exc, url)
    return reason if transient else None


def no_room_for_the_pool(exc: BaseException, url: URL) -> str | None:
    """Why a connection failed, if the server (or the role's limit) had no room for it: for a
    pool, a misconfiguration, said in a line."""
    if any(isinstance(cause, asyncpg.TooManyConnectionsError) for cause in _causes(exc)):
        return _diagnosis(exc, url)[0]
    return None


def server_refusal(exc: BaseException) -> str | None:
    """PostgreSQL's own words for what it refused (`permission denied for schema public`): its
    message alone, never the statement, nor a DETAIL that may hold values."""
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.PostgresError):
            return str(cause)
    return None


def _diagnosis(exc: BaseException, url: URL) -> tuple[str, bool]:
    """Why a connection failed, in a line without the password, and whether it may yet
    succeed (nothing answered, or the server is starting, stopping or full) unlike a wrong
    password or a missing database."""
    host = _host(url)
    user = _user(url)
    where = f"PostgreSQL at {_address(url)}"
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.InvalidPasswordError):
            return f"wrong password: {where} rejected the password for user {user!r}", False
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return f"access denied: {where} refused user {user!r}", False
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"missing database: {where} has no database {_database(url, user)!r}", False
        if isinstance(cause, socket.gaierror):
            return f"unreachable host: cannot resolve {host!r}", True
        if isinstance(cause, TimeoutError):
            return f"unreachable host: {where} did not answer in time", True
        if isinstance(cause, OSError) and cause.filename is not None:  # a file, not a socket
            return f"cannot read {cause.filename}: {cause.strerror}", False
        # The ssl module's error names no file: a missing one was taken for a Unix socket's.
        if isinstance(cause, OSError) and (unreadable := _unreadable_tls_file(url)):
            return f"cannot read {unreadable}", False
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause) or type(cause).__name__
            return f"unreachable host: cannot connect to {where} ({reason})", True
        if isinstance(cause, asyncpg.CannotConnectNowError):
            return f"not ready: {where} is starting up or shutting down", True
        # A statement ended by the server's stopping (57P01, 57P02): a restart, a failover.
        if isinstance(cause, asyncpg.AdminShutdownError | asyncpg.CrashShutdownError):
            return f"not ready: {where} is shutting down", True
        # Answered, but not as target_session_attrs asks (read-write of a primary turned
        # standby in a failover): the one it asks for may soon be there.
        if isinstance(cause, asyncpg.TargetServerAttributeNotMatched):
            return (
                f"not ready: {where} is not the kind of server target_session_attrs asks for "
                "(a standby, or read-only)",
                True,
            )
        if isinstance(cause, asyncpg.TooManyConnectionsError):
            return f"too many connections: {where} has no free connection slot", True
        # Closed while connecting, as a server restarting, or a proxy before it, does.
        if isinstance(cause, asyncpg.ConnectionDoesNotExistError | asyncpg.ConnectionFailureError):
            return f"unreachable host: {where} closed the connection ({type(cause).__name__})", True
        # Refused in words of its own (a pooler's "unsupported startup parameter", a database
        # closed to connections: ALLOW_CONNECTIONS false, template0), which no retry mends.
        if isinstance(
            cause, asyncpg.PostgresConnectionError | asyncpg.ObjectNotInPrerequisiteStateError
        ):
            return f"refused: {where} would not connect: {cause}", False
    return f"cannot connect to {where} ({type(exc).__name__})", False


# The files libpq's URL options name, which the driver reads before it connects.
_TLS_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def _unreadable_tls_file(url: URL) -> str | None:
    """The first TLS file the URL names that cannot be read, as `option path: why`."""
    options = dsn_options(url)
    for option in _TLS_FILES:
        for path in options.get(option, [])[-1:]:
            try:
                with open(os.path.expanduser(path), "rb"):
                    pass
            except OSError as exc:
                return f"{option} {path}: {exc.strerror}"
    return None


async def check_connection(url: URL, *, connect_timeout: float) -> None:
    try:
        engine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={**driver_connect_args(url), "timeout": connect_timeout},
            hide_parameters=True,  # DB_ECHO shows statements, never their values
        )
    except ArgumentError:  # its message quotes the URL, password and all
        raise InvalidDatabaseUrl("invalid database URL: an option cannot be read") from None
    except _URL_ERRORS as exc:
        raise InvalidDatabaseUrl(f"invalid database URL: {exc}") from None
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        # The driver's own words for a URL it cannot use, which name no password.
        unusable = next((c for c in _causes(exc) if isinstance(c, _URL_ERRORS)), None)
        if unusable is not None:
            raise InvalidDatabaseUrl(f"invalid database URL: {unusable}") from None
        reason, transient = _diagnosis(exc, url)
        raise (DatabaseUnreachable if transient else DatabaseConnectError)(reason) from None
    finally:
        await engine.dispose()


# A URL option neither asyncpg nor libpq knows goes to the server as a setting, which the
# server refuses as an undefined object ("unrecognized configuration parameter").
_URL_ERRORS = (OverflowError, TypeError, ValueError, asyncpg.UndefinedObjectError)


async def ensure_database(url: URL) -> None:
    """Create the URL's database when it does not exist yet (the embedded cluster, tests)."""
    maintenance = create_async_engine(
        url.set(database="postgres"),
        connect_args=driver_connect_args(url),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        hide_parameters=True,
    )
    try:
        async with maintenance.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            )
            if not exists:
                quoted = connection.dialect.identifier_preparer.quote(url.database or "")
                # Another starter may create it in the meantime; that is as good.
                with contextlib.suppress(IntegrityError, ProgrammingError):
                    await connection.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        await maintenance.dispose()


DatabaseState = Literal["reachable", "unreachable", "not migrated"]


async def database_state(engine: AsyncEngine, *, within_seconds: float) -> DatabaseState:
    """Whether the database can serve this release's requests: it answers within
    `within_seconds`, and its schema is not behind this release's (MIGRATE_ON_START=false, and
    no `devreg db upgrade` yet)."""
    # A check given up on is cancelled, not waited for: its connection is closed politely,
    # SQLAlchemy waiting 2 s more for a server that already did not answer.
    check = asyncio.ensure_future(migrations.serves_this_release(engine))
    check.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        async with asyncio.timeout(within_seconds):
            served = await asyncio.shield(check)
    except Exception:  # every failure means the same thing here: not ready
        return "unreachable"
    finally:
        check.cancel()  # nothing once it is done
    return "reachable" if served else "not migrated"


async def folds_case_beyond_ascii(engine: AsyncEngine) -> bool | None:
    """Whether the database's lower() knows letters beyond A-Z, on which `name__ic`, `name__isw`
    and emails' matching in any case rest: not under LC_CTYPE=C (the embedded cluster's
    C.UTF-8 does). None when its encoding has no É to ask with (KOI8-R, say)."""
    async with engine.connect() as connection:
        try:
            return bool(await connection.scalar(text("SELECT lower('É') = 'é'")))
        except DBAPIError:  # untranslatable into the database's encoding
            return None


async def server_encoding(engine: AsyncEngine) -> str:
    """The database's encoding (UTF8, LATIN1, ...), as PostgreSQL told the connection when it
    was made: no query."""
    async with engine.connect() as connection:
        pooled = await connection.get_raw_connection()
        asyncpg_connection: asyncpg.Connection = pooled.driver_connection
        return str(asyncpg_connection.get_settings().server_encoding)
