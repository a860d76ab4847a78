"""A real uvicorn process: start-up errors, and a burst far above the pool."""

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devreg.app import create_app
from devreg.db import migrations
from devreg.db.server import DatabaseConnectError
from devreg.db.session import create_engine, open_pool
from tests.api import assert_problem
from tests.support import (
    admin,
    api_client,
    asyncpg_connection,
    create_database,
    devreg_backends,
    devreg_process,
    devreg_server,
    free_port,
    login_role,
    make_settings,
    migrate,
    query,
    read_by_the_server,
    run_devreg,
    running,
    set_revision,
    started_devreg,
    waiting_for_a_lock,
)


def url_setting(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def burst(base_url: str, size: int) -> Counter[int]:
    """`size` requests at once, half creating devices, half listing them.

    Each burst opens fresh connections: one kept alive from an earlier burst could be closed by
    the server's keep-alive timeout just as a request goes out on it (a client-side race).
    """
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one(index: int) -> int:
            if index % 2:
                response = await client.post("/api/v1/devices", json={"name": f"d{index}"})
            else:
                response = await client.get("/api/v1/devices", params={"limit": 10})
            return response.status_code

        return Counter(await asyncio.gather(*(one(i) for i in range(size))))


async def test_burst_of_200_requests_on_a_pool_of_5(committed_database_url: URL) -> None:
    # The last of 200 waits for 199 others: past POOL_TIMEOUT's 3 s on a busy machine (a 503).
    settings = {"POOL_SIZE": "3", "MAX_OVERFLOW": "2", "POOL_TIMEOUT": "25"}
    with devreg_server(DATABASE_URL=url_setting(committed_database_url), **settings) as base_url:
        first = await burst(base_url, 200)
        backends_after_first = await devreg_backends(committed_database_url)
        second = await burst(base_url, 200)
        backends_after_second = await devreg_backends(committed_database_url)
        async with httpx.AsyncClient(base_url=base_url) as client:
            listed = await client.get("/api/v1/devices", params={"limit": 1000})

    assert first == second == Counter({200: 100, 201: 100})
    assert len(listed.json()["items"]) == 200
    # The pool opened its 5 connections once and kept them: no churn between bursts.
    assert len(backends_after_first) == 5
    assert backends_after_second == backends_after_first


def test_wrong_password_at_start_is_one_clear_line(committed_database_url: URL) -> None:
    wrong = committed_database_url.set(password="hunter2-wrong")
    result = run_devreg("serve", "--port", str(free_port()), DATABASE_URL=url_setting(wrong))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"devreg: wrong password: PostgreSQL at 127.0.0.1:{wrong.port} rejected the password "
        f"for user {wrong.username!r}"
    ]
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_in_use_is_one_clear_line_before_the_database_is_touched() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        nowhere = f"postgresql://devreg@127.0.0.1:{free_port()}/devreg"
        result = run_devreg("serve", "--port", str(port), DATABASE_URL=nowhere)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"devreg: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert result.stdout == ""


def test_the_embedded_clusters_port_as_the_http_port_is_refused_before_it_starts() -> None:
    """The cluster was made and started on the port, which uvicorn then could not listen on: exit
    status 3, and a log line saying the address was in use, by devreg's own PostgreSQL."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="devreg-embedded-"))
    data_dir.chmod(0o755)  # as root, the postgres account must reach the cluster inside
    settings = {"DATA_DIR": str(data_dir), "EMBEDDED_PG_PORT": str(port)}
    try:
        result = run_devreg("serve", "--port", str(port), **settings)
    finally:
        run_devreg("db", "stop", **settings)
        shutil.rmtree(data_dir, ignore_errors=True)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"devreg: PORT and EMBEDDED_PG_PORT are both {port}: the embedded PostgreSQL listens "
        "on it; give them different ports"
    ]
    assert "Started server process" not in result.stdout


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


def test_a_worker_names_its_database_once_at_start_never_its_password(
    committed_database_url: URL,
) -> None:
    url = committed_database_url
    assert url.password
    with devreg_process(DATABASE_URL=url_setting(url)) as server:
        logged = server.logged("INFO")
        log = server.log()

    assert [line["message"] for line in logged if line["message"].startswith("database")] == [
        f"database: PostgreSQL at 127.0.0.1:{url.port}/{url.database} as user {url.username!r}"
    ]
    assert url.password not in log


async def test_served_under_a_root_path_it_names_the_prefix_once(
    committed_database_url: URL,
) -> None:
    """ROOT_PATH, for a proxy that strips the prefix before passing requests on (as these
    requests come): with no way to set it, /docs loaded /openapi.json from the site's root (a
    blank page), and Location and a problem's instance pointed outside the prefix."""
    with devreg_server(
        DATABASE_URL=url_setting(committed_database_url), ROOT_PATH="/devreg"
    ) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            docs = await client.get("/docs")
            script = await client.get("/static-offline-docs/swagger-ui-bundle.js")
            schema = await client.get("/openapi.json")
            created = await client.post("/api/v1/devices", json={"name": "pi"})
            missing = await client.get("/api/v1/devices/999999")
            redirected = await client.get("/users")  # a tutorial's path, a slash too few
            live = await client.get("/livez")

    assert "url: '/devreg/openapi.json'" in docs.text
    assert '"/devreg/static-offline-docs/swagger-ui-bundle.js"' in docs.text
    assert script.status_code == 200
    assert schema.json()["servers"] == [{"url": "/devreg"}]
    assert created.headers["location"] == f"/devreg/api/v1/devices/{created.json()['id']}"
    assert missing.json()["instance"] == "/devreg/api/v1/devices/999999"
    assert (redirected.status_code, redirected.headers["location"]) == (307, "/devreg/users/")
    assert live.status_code == 200


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


async def test_sigterm_lets_the_requests_in_flight_finish(committed_database_url: URL) -> None:
    """uvicorn stops accepting, finishes what it accepted, then the lifespan disposes the
    engine: no 5xx, every accepted write committed, no connection left behind."""
    items = [{"name": f"d{index}"} for index in range(10_000)]
    with devreg_process(DATABASE_URL=url_setting(committed_database_url)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:

            async def bulk_write() -> tuple[int, float]:
                response = await client.post("/api/v1/devices/bulk", json=items)
                return response.status_code, time.monotonic()

            writes = [asyncio.create_task(bulk_write()) for _ in range(3)]
            await wait_for_backends(committed_database_url, active=True)
            stopped_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            finished = await asyncio.gather(*writes)
        exit_status = await asyncio.to_thread(server.process.wait, 30)
        log, errors = server.log(), server.errors_logged()

    assert [status for status, _ in finished] == [201, 201, 201]
    assert max(at for _, at in finished) > stopped_at  # still in flight when SIGTERM came
    # uvicorn finishes its shutdown, then re-raises the signal: the conventional exit status.
    assert exit_status == -signal.SIGTERM
    assert "Application shutdown complete" in log  # the lifespan, engine.dispose() included
    assert errors == []
    (row,) = await query(committed_database_url, "SELECT count(*) AS devices FROM devices")
    assert row["devices"] == 30_000
    assert await devreg_backends(committed_database_url) == set()


async def wait_for_backends(url: URL, *, active: bool) -> None:
    """Until some devreg backend is (or none is) running a statement; at most 10 s."""
    deadline = time.monotonic() + 10
    sql = (
        "SELECT count(*) AS busy FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'devreg' AND state = 'active'"
    )
    while time.monotonic() < deadline:
        (row,) = await query(url, sql)
        if bool(row["busy"]) is active:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("devreg never got that far")


async def test_a_client_that_stops_sending_its_body_does_not_hold_the_worker(
    committed_database_url: URL,
) -> None:
    settings = {"MAX_REQUESTS_IN_PROGRESS": "1", "BODY_TIMEOUT": "1", "POOL_TIMEOUT": "3"}
    with devreg_server(DATABASE_URL=url_setting(committed_database_url), **settings) as base_url:
        reader, writer = await _create_half_sent(base_url, length=100)
        await read_by_the_server(writer)  # the stalled request holds the worker's one turn
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                served = await client.get("/api/v1/devices", params={"limit": 1})
            # The rest of the body may yet come, which no request can follow: the answer, then
            # the connection closed (read to its end; in one piece or several).
            stalled_answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    assert served.status_code == 200, served.text
    assert stalled_answer.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nconnection: close\r\n" in stalled_answer.lower()


async def test_bodies_still_arriving_hold_no_turn(committed_database_url: URL) -> None:
    """A request held its worker's turn while its body arrived, up to BODY_TIMEOUT: eight
    clients each sending a body slowly had every other request refused (503)."""
    settings = {"MAX_REQUESTS_IN_PROGRESS": "2", "BODY_TIMEOUT": "60", "POOL_TIMEOUT": "2"}
    with devreg_server(DATABASE_URL=url_setting(committed_database_url), **settings) as base_url:
        stalled = [await _create_half_sent(base_url) for _ in range(4)]
        for _, writer in stalled:  # each request is in the app, waiting for the rest of its body
            await read_by_the_server(writer)
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                served = await client.get("/api/v1/devices", params={"limit": 1})
                for _, writer in stalled:  # the rest of the bodies: each is served
                    writer.write(b'me": "slow"}')
                    await writer.drain()
                answers = [await asyncio.wait_for(reader.read(12), 10) for reader, _ in stalled]
                listed = await client.get("/api/v1/devices", params={"name": "slow"})
        finally:
            for _, writer in stalled:
                writer.close()

    assert served.status_code == 200, served.text
    assert answers == [b"HTTP/1.1 201"] * 4
    assert len(listed.json()["items"]) == 4


async def _create_half_sent(
    base_url: str, *, length: int = 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A device's creation of a `length`-byte body, of which only the first 4 bytes, `{"na`,
    are sent: the rest (`me": "<4 letters>"}` for 16) is the caller's to send, or not."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\n"
        b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{"na' % length
    )
    await writer.drain()
    return reader, writer


async def _exchange(base_url: str, request: bytes) -> bytes:
    """`request` sent on a connection of its own; all the server answers until it closes."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20)
    except ConnectionResetError:  # closed before all of the request was taken
        return b""
    finally:
        writer.close()


async def test_a_request_head_past_its_bound_is_a_431_and_one_within_is_served(
    committed_database_url: URL,
) -> None:
    """A head of any size was taken, httptools joining a header's pieces one at a time: one
    header of 48 MB held the worker for 6-12 s before any check ran."""
    head = b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        too_large = await _exchange(base_url, head + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        # Sent at once, read in one piece or two: the head is measured whole once it ends.
        large_at_once = await _exchange(base_url, head + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        within = await _exchange(base_url, head + b"X-Big: " + b"a" * 60_000 + b"\r\n\r\n")

    status_line, _, rest = too_large.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    headers, _, problem = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers
    # RFC 9110, 6.6.1: an origin server with a clock sends Date; and the headers every other
    # response carries.
    assert re.search(
        rb"\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT", b"\r\n" + headers
    )
    assert b"x-content-type-options: nosniff" in headers
    assert b"content-security-policy: " in headers
    assert b"cache-control: no-cache" in headers
    assert (
        json.loads(problem)["detail"] == "The request line and headers may be at most 65536 bytes"
    )
    assert large_at_once.startswith(b"HTTP/1.1 431 ")
    assert within.startswith(b"HTTP/1.1 200 ")


async def test_a_431_comes_after_the_answers_to_the_requests_before_it(
    committed_database_url: URL,
) -> None:
    """It was written at once, the connection ended after it: a request pipelined before it,
    still being served, was never answered (its user created all the same), and an error was
    logged for its response, cut off."""
    body = b'{"name": "ann"}'
    pipelined = (
        b"POST /api/v1/users HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
        + b"GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        + b"a" * 100_000
        + b"\r\n\r\n"
    )
    with devreg_process(DATABASE_URL=url_setting(committed_database_url)) as server:
        answers = await _exchange(server.base_url, pipelined)
        logged = server.log()

    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answers) == [b"201", b"431"], answers[:300]
    assert '"level":"ERROR"' not in logged.replace(" ", "")


async def test_a_request_that_cannot_be_parsed_is_refused_after_the_answers_before_it(
    committed_database_url: URL,
) -> None:
    """uvicorn's 400 was written at once and the connection closed: a write pipelined before
    it was cut off unanswered (served on, it would have been done all the same)."""
    body = b'{"name": "ann"}'
    pipelined = (
        b"POST /api/v1/users HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
        + b"GET /\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    bad_chunk = (
        b"POST /api/v1/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    # Not HTTP in the body of a request queued behind one being served: in a chunk's size, or
    # in the framing of a request asking for an upgrade (read on as plain HTTP).
    served_first = pipelined.partition(b"GET /\x01")[0]
    queued_bad_bodies = [
        served_first.replace(b'"ann"', b'"bob"') + bad_chunk,
        served_first.replace(b'"ann"', b'"cyd"')
        + b"POST /api/v1/users HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
        + b"Upgrade: h2c\r\nTransfer-Encoding: identity\r\n\r\nhello",
    ]
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        answers = await _exchange(base_url, pipelined)
        queued_answers = [await _exchange(base_url, sent) for sent in queued_bad_bodies]
        async with httpx.AsyncClient(base_url=base_url) as client:
            users = (await client.get("/api/v1/users")).json()["items"]
        # Its own body not HTTP, a request is refused at once, not once its body is given up.
        refused = await asyncio.wait_for(_exchange(base_url, bad_chunk), 5)

    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answers) == [b"201", b"400"], answers[:300]
    for answered in queued_answers:
        assert re.findall(rb"HTTP/1.1 (\d{3}) ", answered) == [b"201", b"400"], answered[:300]
    assert sorted(user["name"] for user in users) == ["ann", "bob", "cyd"]
    assert refused.startswith(b"HTTP/1.1 400 ")


async def test_a_head_too_large_asking_for_an_upgrade_is_a_431(committed_database_url: URL) -> None:
    """Its body, sent with it, was read as a request of its own: uvicorn's 400 took the 431's
    place."""
    body = b'{"name": "x"}'
    sent = (
        b"POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000
        + b"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\n"
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )  # fmt: skip
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        answer = await _exchange(base_url, sent)

    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


async def test_a_431_to_a_head_request_has_no_body(committed_database_url: URL) -> None:
    """RFC 9110, 9.3.2: it had the problem a GET gets, which a client reads as the start of
    the next response."""
    head = b"HEAD /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        answer = await _exchange(base_url, head)
        # A request sent after it, in the same piece, is not the one answered.
        followed = await _exchange(
            base_url, head + b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )

    headers, _, body = answer.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 431 ")
    assert b"\r\ncontent-length: " in headers  # as a GET would have it
    assert body == b""
    assert followed.startswith(b"HTTP/1.1 431 ")
    assert followed.endswith(b"\r\n\r\n")


async def test_a_response_is_dated_no_earlier_than_the_change_it_reports(
    committed_database_url: URL,
) -> None:
    """RFC 9110, 8.8.2.1: Last-Modified is never later than the response's Date. uvicorn dated a
    response with its clock as last read (once a second) before the request's head arrived: a
    user made as its body came, a second later, was modified after its answer's Date (so was
    about one fresh write in four)."""
    body = b'{"name": "ann"}'
    head = (
        b"POST /api/v1/users HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(1.1)  # past the second the head arrived in
            writer.write(body)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 20)
        finally:
            writer.close()

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 201 Created", answer
    lines = rest.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    last_modified = parsedate_to_datetime(headers["last-modified"])
    assert last_modified <= parsedate_to_datetime(headers["date"]), headers


async def test_a_large_body_is_not_taken_for_a_head(committed_database_url: URL) -> None:
    """The piece a body ended in was counted as the next head's: a bulk write of 1 MB was
    answered 431, its devices created all the same; and on a connection kept alive, a short
    head sent in two pieces after a body was refused."""
    items = json.dumps(
        [{"name": f"d{index}", "model": "m" * 90, "tags": ["t" * 60]} for index in range(6_000)]
    )
    body = b'{"name": "kept"}'
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            bulk = await client.post(
                "/api/v1/devices/bulk",
                content=items.encode(),
                headers={"content-type": "application/json"},
            )
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(body)
            await writer.drain()
            created = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"content-length: (\d+)", created.lower())
            assert length is not None
            await reader.readexactly(int(length[1]))
            writer.write(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 3_000)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"p" * 3_000 + b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
            served = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    assert bulk.status_code == 201, bulk.text[:200]
    assert len(bulk.json()["ids"]) == 6_000
    assert created.startswith(b"HTTP/1.1 201 ")
    assert served.startswith(b"HTTP/1.1 200 ")


async def test_a_request_asking_to_upgrade_is_read_whole_and_so_are_those_after_it(
    committed_database_url: URL,
) -> None:
    """httptools stops at the head of a request that asks to switch protocols (`curl --http2`
    asks for h2c), taking what follows for the new protocol: a POST's body was lost (422 "Field
    required"), read as a request of its own when it came in a later piece, and the requests
    sent after it in the same piece were never answered."""
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    json_body = b"Host: localhost\r\nContent-Type: application/json\r\n"
    sized = b'{"name": "sized"}'
    chunked = b'{"name": "chunked"}'
    pipelined = (
        b"POST /api/v1/devices HTTP/1.1\r\n" + json_body + upgrade
        + b"Content-Length: %d\r\n\r\n%s" % (len(sized), sized)
        + b"POST /api/v1/devices HTTP/1.1\r\n" + json_body + upgrade
        + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(chunked), chunked)
        + b"GET /livez HTTP/1.1\r\nHost: localhost\r\n" + upgrade + b"\r\n"
        + b"GET /api/v1/devices?fields=name HTTP/1.1\r\nHost: localhost\r\n"
        + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    late = b'{"name": "late"}'
    with devreg_server(DATABASE_URL=url_setting(committed_database_url)) as base_url:
        answers = await _exchange(base_url, pipelined)
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"POST /api/v1/devices HTTP/1.1\r\n" + json_body + upgrade
                + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(late)
            )  # fmt: skip
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(late)
            await writer.drain()
            answer_to_late = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answers) == [
        b"201",
        b"201",
        b"200",
        b"200",
    ], answers
    listing = json.loads(answers.rpartition(b"\r\n\r\n")[2])
    assert [item["name"] for item in listing["items"]] == ["sized", "chunked"]
    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answer_to_late) == [b"201"]
    assert b'"name":"late"' in answer_to_late


async def test_a_websocket_upgrade_is_answered_as_any_request(committed_database_url: URL) -> None:
    """It was uvicorn's plain-text 403, without devreg's headers or log line."""
    with devreg_process(DATABASE_URL=url_setting(committed_database_url)) as server:
        answer = await _exchange(
            server.base_url,
            b"GET /nope HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        logged = server.log()

    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"content-type: application/problem+json" in answer.lower()
    assert b"x-request-id: " in answer.lower()
    assert '"path": "/nope"' in logged or '"path":"/nope"' in logged


async def test_sighup_to_one_worker_lets_the_request_in_flight_finish(
    committed_database_url: URL,
) -> None:
    """With one worker, SIGHUP (a terminal closed, `systemctl reload`) ended the server at once,
    the request in flight answered with nothing."""
    with devreg_process(DATABASE_URL=url_setting(committed_database_url)) as server:
        reader, writer = await _create_half_sent(server.base_url)
        await read_by_the_server(writer)
        server.process.send_signal(signal.SIGHUP)
        await server.logs("Shutting down")
        writer.write(b'me": "late"}')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(12), 10)
        writer.close()
        exit_status = await asyncio.to_thread(server.process.wait, 30)

    assert answer == b"HTTP/1.1 201"
    assert exit_status == -signal.SIGTERM  # drained as after SIGTERM
    (row,) = await query(committed_database_url, "SELECT count(*) AS devices FROM devices")
    assert row["devices"] == 1


def _with_its_children(pid: int) -> list[int]:
    """The process and those it started: its workers, its resource tracker."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


async def test_sighup_to_the_whole_group_of_several_workers_lets_the_requests_in_flight_finish(
    committed_database_url: URL,
) -> None:
    """A terminal closed sends SIGHUP to every process of the server's group, the workers too:
    with several workers, each ended at once, the requests in flight answered with nothing,
    rather than being replaced one by one by their supervisor."""
    database = url_setting(committed_database_url)
    with devreg_process(DATABASE_URL=database, WORKERS="2") as server:
        await server.logs("Application startup complete.", times=2)
        requests = [await _create_half_sent(server.base_url) for _ in range(4)]
        for _, writer in requests:
            await read_by_the_server(writer)
        for process in _with_its_children(server.process.pid):
            os.kill(process, signal.SIGHUP)
        await server.logs("Received SIGHUP, restarting processes.")
        answers = []
        for reader, writer in requests:
            writer.write(b'me": "late"}')
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(12), 10))
            writer.close()
        assert server.process.poll() is None  # replaced, not stopped

    assert answers == [b"HTTP/1.1 201"] * 4
    (row,) = await query(committed_database_url, "SELECT count(*) AS devices FROM devices")
    assert row["devices"] == 4


async def test_workers_whose_supervisor_was_killed_stop(committed_database_url: URL) -> None:
    """`devreg serve` with several workers killed with SIGKILL (by hand, by the kernel short of
    memory): its workers went on serving with no supervisor, for ever, holding the port (a new
    `devreg serve` said "address already in use") and their database connections."""
    database = url_setting(committed_database_url)
    with devreg_process(DATABASE_URL=database, WORKERS="2") as server:
        await server.logs("Application startup complete.", times=2)
        workers = _with_its_children(server.process.pid)[1:]
        server.process.kill()
        server.process.wait()

        deadline = time.monotonic() + 30
        try:
            while any(map(_running, workers)):
                assert time.monotonic() < deadline, "the workers went on without a supervisor"
                await asyncio.sleep(0.1)
        finally:
            for worker in filter(_running, workers):
                os.kill(worker, signal.SIGKILL)
        while await devreg_backends(committed_database_url):  # their connections, closing
            assert time.monotonic() < deadline, "the workers' connections stayed open"
            await asyncio.sleep(0.1)


# Run by every Python started with this on its path: a worker (multiprocessing's spawned
# process) boots as slowly as on a small or busy host, past uvicorn's 5 s health check.
_SLOW_WORKER_BOOT = """
import sys, time
if "--multiprocessing-fork" in sys.argv:
    time.sleep(7)
"""


async def test_workers_slow_to_boot_are_waited_for(
    committed_database_url: URL, tmp_path: Path
) -> None:
    """A worker that had not answered uvicorn's health check within 5 s of being started (still
    loading Python and devreg, on a slow or busy host) was killed and started again, for ever:
    `devreg serve --workers 2` never served."""
    (tmp_path / "sitecustomize.py").write_text(_SLOW_WORKER_BOOT)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    database = url_setting(committed_database_url)
    with devreg_process(DATABASE_URL=database, WORKERS="2", PYTHONPATH=path) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            answer = await client.get("/readyz")
        log = server.log()

    assert answer.status_code == 200
    assert "died" not in log


def _running(pid: int) -> bool:
    """Whether the process has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_sighup_leaves_one_started_ignoring_it_serving(committed_database_url: URL) -> None:
    """`nohup devreg serve` was stopped by the SIGHUP nohup was to keep from it."""
    database = url_setting(committed_database_url)
    with devreg_process(ignoring=[signal.SIGHUP], DATABASE_URL=database) as server:
        server.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/livez")).status_code == 200
        assert server.process.poll() is None


async def test_sighup_waits_for_replacement_workers_that_migrate_first(
    committed_database_url: URL,
) -> None:
    """SIGHUP replaces several workers one by one, a new release's first applying its
    migrations (or waiting for another's: another replica's, `devreg db upgrade`'s). uvicorn gave
    a replacement 5 s to start, then killed it, amid a migration too, and kept the old workers:
    the new release never served, whatever the number of SIGHUPs."""
    database = url_setting(committed_database_url)
    with devreg_process(DATABASE_URL=database, WORKERS="2") as server:
        await migrate(committed_database_url, down_to="-1")  # the new release's, pending
        holder = await asyncpg_connection(committed_database_url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", migrations.MIGRATION_LOCK_KEY)
            server.process.send_signal(signal.SIGHUP)
            await waiting_for_a_lock(holder)  # the first replacement's start-up
            await asyncio.sleep(6)  # past uvicorn's 5 s
        finally:
            await holder.close()
        await server.logs("Application startup complete.", times=4)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            answer = await client.get("/readyz")
        errors = server.errors_logged()

    assert errors == []
    assert answer.status_code == 200
    [revision] = await query(committed_database_url, "SELECT version_num FROM alembic_version")
    assert revision["version_num"] == migrations.head_revision()


async def test_sighup_keeps_the_old_workers_when_a_replacement_cannot_start(
    committed_database_url: URL,
) -> None:
    """A replacement that cannot start (the database now a newer release's) ends the rolling
    restart, not the server: the old workers go on serving, as the README says."""
    with devreg_process(DATABASE_URL=url_setting(committed_database_url), WORKERS="2") as server:
        await set_revision(committed_database_url, "a1b2c3d4")  # a newer release's
        server.process.send_signal(signal.SIGHUP)
        await server.logs("aborting the restart")
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            answers = [(await client.get("/livez")).status_code for _ in range(4)]
        still_serving = server.process.poll() is None
        log = server.log()

    assert answers == [200] * 4, log
    assert still_serving, log
    assert "which this release does not know" in log  # the replacement's reason


@pytest.mark.parametrize(
    ("ending", "exit_status"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)]
)
async def test_a_stop_signal_ends_a_start_up_waiting_for_the_migration_lock(
    committed_database_url: URL, ending: signal.Signals, exit_status: int
) -> None:
    """uvicorn looks at a stop signal once start-up is over: a start-up waiting for another's
    migration (or running a long one) went on waiting, through SIGTERM and Ctrl-C (twice too),
    until the lock was let go."""
    holder = await asyncpg_connection(committed_database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", migrations.MIGRATION_LOCK_KEY)
        server = started_devreg(
            "serve",
            "--port",
            str(free_port()),
            DATABASE_URL=url_setting(committed_database_url),
            WORKERS="1",
        )
        try:
            await waiting_for_a_lock(holder)
            server.send_signal(ending)
            ended: int | None = await asyncio.to_thread(server.wait, 10)
        except subprocess.TimeoutExpired:
            ended = None
        finally:
            server.kill()
            output, errors = server.communicate()
    finally:
        await holder.close()

    assert ended == exit_status, output + errors
    assert "Traceback" not in output + errors
    assert await devreg_backends(committed_database_url) == set()


@pytest.mark.parametrize(
    ("workers", "log_level"), [("2", "info"), ("1", "critical"), ("2", "critical")]
)
async def test_a_worker_that_cannot_start_is_a_failed_start_that_says_why(
    committed_database_url: URL, workers: str, log_level: str
) -> None:
    """With two workers or more, uvicorn's supervisor stopped them all and exited with 0. At
    LOG_LEVEL=critical the server exited with status 3 having said nothing at all (one worker),
    or that its log said why (several), when the log said nothing: the reason was logged as an
    error."""
    await set_revision(committed_database_url, "a1b2c3d4")  # a newer release's

    result = await asyncio.to_thread(
        run_devreg,
        "serve",
        "--port",
        str(free_port()),
        DATABASE_URL=url_setting(committed_database_url),
        WORKERS=workers,
        LOG_LEVEL=log_level,
    )

    assert result.returncode == 3
    assert "which this release does not know" in result.stdout
    if workers != "1":
        assert result.stderr.splitlines() == [
            "devreg: a worker could not start (its log says why); stopped"
        ]


async def test_requests_still_served_when_the_shutdown_timeout_passes_get_a_503(
    committed_database_url: URL,
) -> None:
    """Cancelled by uvicorn once SHUTDOWN_TIMEOUT passed, a request was uvicorn's bare 500 in
    plain text (no problem, no request id, no Retry-After), logged as a crash."""
    url = url_setting(committed_database_url)
    with devreg_process(DATABASE_URL=url, SHUTDOWN_TIMEOUT="1") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            device = (await client.post("/api/v1/devices", json={"name": "held"})).json()
            holder = await asyncpg_connection(committed_database_url)
            try:
                async with holder.transaction():
                    await holder.execute(
                        "SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", device["id"]
                    )
                    writes = [
                        asyncio.create_task(
                            client.patch(f"/api/v1/devices/{device['id']}", json={"model": "m"})
                        )
                        for _ in range(2)
                    ]
                    await waiting_for_a_lock(holder)
                    server.process.send_signal(signal.SIGTERM)
                    answers = await asyncio.gather(*writes)
            finally:
                await holder.close()
        exit_status = await asyncio.to_thread(server.process.wait, 30)
        errors = server.errors_logged()

    for answer in answers:
        assert_problem(answer, 503)
        assert answer.headers["Retry-After"]
        assert answer.headers["X-Request-ID"]
    # uvicorn's own line, that it cancelled them; no crash.
    assert [(e["logger"], e["message"].split()[0]) for e in errors] == [("uvicorn.error", "Cancel")]
    assert exit_status == -signal.SIGTERM


async def test_a_client_reading_slowly_does_not_keep_the_server_from_stopping(
    committed_database_url: URL,
) -> None:
    """SIGTERM waited for every connection to close: an export read slowly kept the server
    up for as long as its client liked."""
    url = url_setting(committed_database_url)
    assert (
        run_devreg("seed", "--devices", "20000", "--users", "10", DATABASE_URL=url).returncode == 0
    )
    with devreg_process(DATABASE_URL=url, SHUTDOWN_TIMEOUT="1") as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/v1/devices/export HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(100), 10)).startswith(b"HTTP/1.1 200")
        server.process.send_signal(signal.SIGTERM)
        try:
            exit_status = await asyncio.to_thread(server.process.wait, 15)
        finally:
            writer.close()

    assert exit_status == -signal.SIGTERM


async def test_a_worker_starting_while_its_database_is_unreachable_serves_503s_until_it_answers(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker replacing one that ended while the database was down (a restart, a failover)
    failed its start-up, and uvicorn's supervisor then stopped every worker: the whole server
    gone for a moment's outage. Unreachable is not misconfigured: it starts, and says so."""
    nowhere = committed_database_url.set(host="127.0.0.1", port=free_port())
    app = create_app(make_settings(nowhere, auth="off"))

    with caplog.at_level(logging.WARNING):
        async with running(app) as started, api_client(started) as client:
            ready = await client.get("/readyz")
            listed = await client.get("/api/v1/devices")

    assert ready.status_code == 503
    assert ready.json()["db"] == "unreachable"
    assert listed.status_code == 503
    assert listed.headers["retry-after"].isdigit()
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unreachable")]
    assert warned[0].startswith(
        f"unreachable host: cannot connect to PostgreSQL at 127.0.0.1:{nowhere.port}"
    )
    assert warned[0].endswith(": serving 503s until it answers")


async def test_a_worker_starting_with_a_wrong_password_still_fails(
    committed_database_url: URL,
) -> None:
    wrong = committed_database_url.set(password="not-the-password")
    app = create_app(make_settings(wrong, auth="off"))

    with pytest.raises(DatabaseConnectError, match="wrong password"):
        async with running(app):
            pass


class _Switch:
    """A TCP relay to PostgreSQL that can be switched off (closing what it relays) and on. It
    runs its own event loop in a thread: starting a server blocks the test's."""

    def __init__(self, target: URL) -> None:
        self.target = (target.host or "127.0.0.1", target.port or 5432)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.relayed: list[asyncio.StreamWriter] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def on(self) -> None:
        asyncio.run_coroutine_threadsafe(self._on(), self.loop).result(10)

    def off(self) -> None:
        asyncio.run_coroutine_threadsafe(self._off(), self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _on(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _off(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.relayed:
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.relayed += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_a_database_gone_after_the_connection_check_leaves_a_worker_serving_503s(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Gone between the start-up's connection check and the pool's opening (a second worker
    starting as a relay went off, in a full run), the start-up failed, and uvicorn's supervisor
    ended the whole server."""
    switch = _Switch(committed_database_url)
    switch.on()
    relayed = committed_database_url.set(host="127.0.0.1", port=switch.port)
    upgrade = migrations.upgrade

    async def upgrade_then_go_away(*args: object) -> None:
        await upgrade(*args)  # type: ignore[arg-type]
        await asyncio.to_thread(switch.off)

    monkeypatch.setattr(migrations, "upgrade", upgrade_then_go_away)
    try:
        with caplog.at_level(logging.WARNING):
            async with (
                running(
                    create_app(make_settings(relayed, auth="off", migrate_on_start=True))
                ) as app,
                api_client(app) as client,
            ):
                away = await client.get("/api/v1/devices")
                await asyncio.to_thread(switch.on)
                back = await client.get("/api/v1/devices")
    finally:
        switch.close()

    assert_problem(away, 503)
    assert back.status_code == 200, back.text
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.endswith("serving 503s until it answers") for m in warned), warned


async def test_a_pool_too_large_for_the_server_fails_the_start_up_holding_nothing(
    server_url: URL, database_url: URL
) -> None:
    """POOL_SIZE beyond what the server lets devreg's role open is a misconfiguration, no
    passing outage: the start-up was made to serve 503s instead, and the connections opened
    after the first refusal stayed checked out for good, a pool of fewer forever."""
    async with login_role(
        server_url, database_url, grant="ALL", limits="CONNECTION LIMIT 3"
    ) as url:
        settings = make_settings(url, pool_size=6, max_overflow=0)
        engine = create_engine(url, settings)
        try:
            with pytest.raises(DBAPIError, match="too many connections"):
                await open_pool(engine)
            checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
        finally:
            await engine.dispose()
        with pytest.raises(DBAPIError, match="too many connections"):
            async with running(create_app(settings)):
                pass

    assert checked_out == 0


async def test_a_served_pool_too_large_for_the_server_says_too_many_connections(
    server_url: URL, committed_database_url: URL
) -> None:
    """The worker's log said only "error: DBAPIError (TooManyConnectionsError)", where the
    README promises it says "too many connections", and where."""
    async with login_role(
        server_url, committed_database_url, grant="ALL", limits="CONNECTION LIMIT 3"
    ) as url:
        result = await asyncio.to_thread(
            run_devreg,
            "serve",
            "--port",
            str(free_port()),
            DATABASE_URL=url_setting(url),
            WORKERS="1",
            POOL_SIZE="6",
            MAX_OVERFLOW="0",
        )

    assert result.returncode == 3
    errors = [
        json.loads(line)["message"]
        for line in result.stdout.splitlines()
        if line.startswith("{") and json.loads(line)["level"] in ("ERROR", "CRITICAL")
    ]
    assert any(
        message.startswith(f"too many connections: PostgreSQL at 127.0.0.1:{url.port} ")
        and "POOL_SIZE" in message
        for message in errors
    ), errors


async def test_a_migration_the_database_refuses_is_logged_in_its_words(
    server_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that may not create tables (PostgreSQL 15's default in another's database): the
    worker's log said only "error: ProgrammingError (InsufficientPrivilegeError)", where
    `devreg db upgrade` says what was denied."""
    name = "devreg_no_create"
    url = await create_database(server_url, name)
    try:
        await admin(url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        async with login_role(server_url, url, grant="SELECT") as role_url:
            app = create_app(make_settings(role_url, migrate_on_start=True))
            with caplog.at_level(logging.ERROR, logger="devreg"), pytest.raises(DBAPIError):
                async with running(app):
                    pass
    finally:
        await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    logged = [record.getMessage() for record in caplog.records if record.name == "devreg"]
    assert logged == ["database error: permission denied for schema public"]


def _a_worker(server_pid: int) -> int:
    """One of `devreg serve`'s worker processes (its supervisor's children, but for
    multiprocessing's resource tracker)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return next(
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


async def test_a_worker_replaced_while_the_database_is_down_keeps_the_server_up(
    committed_database_url: URL,
) -> None:
    """The replacement failed its start-up (nothing answered), and uvicorn's supervisor then
    stopped the other worker too: a moment's outage of the database ended the server."""
    switch = _Switch(committed_database_url)
    switch.on()
    relayed = committed_database_url.set(host="127.0.0.1", port=switch.port)
    try:
        with devreg_process(DATABASE_URL=url_setting(relayed), WORKERS="2") as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
                assert (await client.get("/api/v1/devices")).status_code == 200
                switch.off()
                os.kill(_a_worker(server.process.pid), signal.SIGKILL)
                # The replacement starts while nothing answers (slowly, on a busy machine).
                deadline = time.monotonic() + 60
                while "serving 503s until it answers" not in server.log():
                    assert time.monotonic() < deadline, server.log()
                    await asyncio.sleep(0.25)
                await asyncio.sleep(1)  # the supervisor would stop the server about now
                still_up = server.process.poll() is None
                switch.on()
                statuses = []
                for _ in range(40):
                    with contextlib.suppress(httpx.TransportError):
                        statuses.append((await client.get("/api/v1/devices")).status_code)
                        if statuses[-1] == 200:
                            break
                    await asyncio.sleep(0.25)
            log = server.log()
    finally:
        switch.off()
        switch.close()

    assert still_up, log
    assert statuses[-1] == 200
    assert "serving 503s until it answers" in log
