"""What devreg finds out about the PostgreSQL server it is given."""

import asyncio
import logging
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.config import Settings
from devreg.db.server import (
    DatabaseConnectError,
    DatabaseUnreachable,
    check_connection,
    gone_away,
)
from tests.support import admin, create_database, make_settings, running

FOLDS_ONLY_ASCII = "the database folds only A-Z to lower case"
LACKS_CHARACTERS = "the database's encoding is {}, not UTF8"


async def warnings_at_start(url: URL, caplog: pytest.LogCaptureFixture) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="devreg"):
        async with running(create_app(make_settings(url))):
            pass
    return [record.getMessage() for record in caplog.records if record.name == "devreg"]


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1", "KOI8R"])
async def test_a_database_whose_lower_case_is_ascii_only_is_warned_of(
    server_url: URL, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    """Under LC_CTYPE=C `name__ic=éclair` missed ÉCLAIR, and ÉVE@x.org and éve@x.org were two
    users, where README promised any case: nothing said so. (Asked with a Σ, a LATIN1 database
    failed the start-up; KOI8-R has no É to ask with, and is not warned of.)"""
    name = f"devreg_c_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, encoding=encoding)
    try:
        warnings = await warnings_at_start(url, caplog)
    finally:
        await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    warned = any(warning.startswith(FOLDS_ONLY_ASCII) for warning in warnings)
    assert warned is (encoding != "KOI8R"), warnings


async def test_a_database_that_folds_every_letter_is_not(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    warnings = await warnings_at_start(committed_database_url, caplog)

    assert not any(warning.startswith(FOLDS_ONLY_ASCII) for warning in warnings), warnings


async def test_a_database_in_an_encoding_lacking_characters_is_warned_of(
    latin1_database_url: URL, committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A LATIN1 database refuses a name with Ž or an emoji, and nothing said so before a
    client's request did."""
    latin1 = await warnings_at_start(latin1_database_url, caplog)
    caplog.clear()
    utf8 = await warnings_at_start(committed_database_url, caplog)

    assert any(warning.startswith(LACKS_CHARACTERS.format("LATIN1")) for warning in latin1)
    assert not any("the database's encoding is" in warning for warning in utf8), utf8


async def test_a_server_closing_the_connection_once_made_may_yet_answer(
    committed_database_url: URL,
) -> None:
    """As a restarting server, or a proxy before it, does: the connection made, then closed at
    the first query. It was taken for a failure no retry mends (a DBAPIError), and a worker
    starting meanwhile ended the server (uvicorn stops every worker then)."""
    target = (committed_database_url.host or "127.0.0.1", committed_database_url.port or 5432)

    async def close_at_first_query(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        ready = asyncio.Event()

        async def answers() -> None:
            while data := await upstream_reader.read(65536):
                writer.write(data)
                if b"Z\x00\x00\x00\x05" in data:  # ReadyForQuery: the connection is made
                    ready.set()

        relay = asyncio.create_task(answers())
        while data := await reader.read(65536):
            if ready.is_set():
                break
            upstream_writer.write(data)
        relay.cancel()
        writer.close()
        upstream_writer.close()

    failure, port = await connection_failure(committed_database_url, close_at_first_query)

    assert isinstance(failure, DatabaseUnreachable)
    assert str(failure).startswith(f"unreachable host: PostgreSQL at 127.0.0.1:{port}")


async def test_a_server_refusing_in_words_of_its_own_is_not_waited_for(
    committed_database_url: URL,
) -> None:
    """A pooler refuses a startup parameter it does not know (SQLSTATE 08P01): no retry mends
    that. Taken for a connection closed (and so for an outage that passes), a worker starting
    then served 503s for ever instead of stopping with the server's words."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = struct.unpack("!I", await reader.readexactly(4))[0]
        body = await reader.readexactly(size - 4)
        if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest: no
            writer.write(b"N")
            size = struct.unpack("!I", await reader.readexactly(4))[0]
            await reader.readexactly(size - 4)
        fields = b"SFATAL\0VFATAL\0C08P01\0Munsupported startup parameter: statement_timeout\0\0"
        writer.write(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        await writer.drain()
        writer.close()

    failure, _ = await connection_failure(committed_database_url, refuse)

    assert not isinstance(failure, DatabaseUnreachable)
    assert "unsupported startup parameter: statement_timeout" in str(failure)


async def test_a_database_closed_to_connections_is_said_in_the_servers_words(
    server_url: URL, committed_database_url: URL
) -> None:
    """`ALTER DATABASE ... ALLOW_CONNECTIONS false` (maintenance), or EMBEDDED_DB_NAME=template0:
    every command and start said only "cannot connect to PostgreSQL at HOST:PORT (DBAPIError)"."""
    name = committed_database_url.database
    await admin(server_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    try:
        with pytest.raises(DatabaseConnectError) as refused:
            await check_connection(committed_database_url, connect_timeout=5)
    finally:
        await admin(server_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

    assert str(refused.value) == (
        f"refused: PostgreSQL at 127.0.0.1:{committed_database_url.port} would not connect: "
        f'database "{name}" is not currently accepting connections'
    )


async def test_a_server_not_of_the_kind_target_session_attrs_asks_for_is_said_and_waited_for(
    server_url: URL, committed_database_url: URL
) -> None:
    """`target_session_attrs=read-write` and a server read-only (a primary turned standby in a
    failover): every command and start said only "cannot connect to PostgreSQL at HOST:PORT
    (InternalError)", and a worker starting then stopped the server instead of waiting."""
    name = committed_database_url.database
    await admin(server_url, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    url = committed_database_url.update_query_dict({"target_session_attrs": "read-write"})
    try:
        with pytest.raises(DatabaseUnreachable) as refused:
            await check_connection(url, connect_timeout=5)
    finally:
        await admin(server_url, f"ALTER DATABASE {name} RESET default_transaction_read_only")

    assert str(refused.value) == (
        f"not ready: PostgreSQL at 127.0.0.1:{url.port} is not the kind of server "
        "target_session_attrs asks for (a standby, or read-only)"
    )


@pytest.mark.parametrize("option", ["sslrootcert", "sslcert"])
async def test_a_tls_file_the_url_names_that_cannot_be_read_is_named(
    committed_database_url: URL, tmp_path: Path, option: str
) -> None:
    """The ssl module's error names no file: a certificate file missing was "unreachable host:
    cannot connect to PostgreSQL at ... (No such file or directory)", an outage to wait out."""
    missing = tmp_path / "missing.pem"
    given = committed_database_url.update_query_dict({"sslmode": "require", option: str(missing)})
    settings = Settings(_env_file=None, database_url=given.render_as_string(hide_password=False))
    url = settings.external_database_url()
    assert url is not None

    with pytest.raises(DatabaseConnectError) as raised:
        await check_connection(url, connect_timeout=5)

    assert not isinstance(raised.value, DatabaseUnreachable)
    assert str(raised.value) == f"cannot read {option} {missing}: No such file or directory"


async def connection_failure(
    url: URL,
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[DatabaseConnectError, int]:
    """How checking a connection to a server that `serve`s on a port of its own fails, and the
    port."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DatabaseConnectError) as raised:
            await check_connection(url.set(host="127.0.0.1", port=port), connect_timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    return raised.value, port


@pytest.mark.parametrize(
    ("failure", "waited_out"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        # localhost refusing on both ::1 and 127.0.0.1, as asyncio reports it
        (OSError("Multiple exceptions: [Errno 111] ..., [Errno 111] ..."), True),
        (OSError(113, "No route to host"), True),  # an address moved by a failover
        (socket.gaierror(-2, "Name or service not known"), True),
        (FileNotFoundError(2, "No such file or directory"), True),  # a Unix socket, restarting
        (asyncpg.ConnectionDoesNotExistError("closed"), True),
        (asyncpg.CannotConnectNowError("starting up"), True),
        (asyncpg.AdminShutdownError("terminating connection"), True),  # a statement ended
        (asyncpg.TooManyConnectionsError("too many"), False),  # a pool that does not fit
        (PermissionError(13, "Permission denied", "/srv/migrations/x.py"), False),  # a file
    ],
    ids=repr,
)
def test_only_what_may_pass_is_waited_out_once_the_server_answered(
    failure: BaseException, waited_out: bool
) -> None:
    """After the start-up's check, any OSError was read as the server away (a migration that
    could not read its file was "unreachable host"); then, by the review's, only a few types,
    so that localhost refusing on both its addresses, a Unix socket gone with its restarting
    server or a name gone in a failover ended the whole server."""
    url = URL.create("postgresql+asyncpg", host="db.internal", database="devreg")

    assert (gone_away(failure, url) is not None) is waited_out
