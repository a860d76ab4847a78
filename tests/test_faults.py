"""PostgreSQL restarted under load: requests fail fast with a 503 problem meanwhile, the pool
drops its dead connections, and devreg serves again by itself once the database is back."""

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.db.embedded import EmbeddedCluster
from devreg.db.session import (
    ANSWER_GRACE_SECONDS,
    create_engine,
    create_sessionmaker,
    session_scope,
)
from devreg.devices.filters import DeviceFilter
from devreg.devices.repository import DeviceRepository
from devreg.errors import StatementTimedOut
from tests.api import DEVICES, PROBLEM_JSON, assert_problem, create_device, create_user
from tests.auth.test_tokens import TOKENS
from tests.support import (
    admin,
    api_client,
    devreg_process,
    free_port,
    login_role,
    make_settings,
    query,
    running,
)

LOADERS = 8


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    """A cluster of this test's own: restarting the suite's would cut every other test off."""
    root = Path(tempfile.mkdtemp(prefix="devreg-faults-"))
    root.chmod(0o755)  # the postgres account must reach the data directory inside
    cluster = EmbeddedCluster(
        data_dir=root / "pg", port=free_port(), server_settings={"fsync": "off"}
    )
    cluster.ensure_running()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_database_restart_under_load_costs_503s_and_nothing_else(
    cluster: EmbeddedCluster,
) -> None:
    await admin(cluster.url("postgres"), "CREATE DATABASE devreg")
    url = cluster.url("devreg").render_as_string(hide_password=False)
    statuses: Counter[int] = Counter()
    unavailable_without_retry_after = 0
    done = asyncio.Event()

    with devreg_process(DATABASE_URL=url, POOL_SIZE="4", MAX_OVERFLOW="0") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as client:
            device = (await client.post(DEVICES, json={"name": "probe"})).json()
            requests = [
                ("GET", f"{DEVICES}/{device['id']}", None),
                ("POST", f"{DEVICES}/{device['id']}/heartbeat", None),
                ("GET", DEVICES, None),
                ("POST", DEVICES, {"name": "during the restart"}),
            ]

            async def load(offset: int) -> None:
                nonlocal unavailable_without_retry_after
                sent = offset
                while not done.is_set():
                    method, path, body = requests[sent % len(requests)]
                    response = await client.request(method, path, json=body)
                    statuses[response.status_code] += 1
                    if response.status_code == 503:
                        assert response.headers["content-type"].startswith(PROBLEM_JSON)
                        unavailable_without_retry_after += "retry-after" not in response.headers
                    sent += 1

            loaders = [asyncio.create_task(load(index)) for index in range(LOADERS)]
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(1)
            before_restart = statuses.copy()
            await asyncio.to_thread(cluster.ensure_running)
            back_at = time.monotonic()
            while (await client.get(f"{DEVICES}/{device['id']}")).status_code != 200:
                assert time.monotonic() - back_at < 10, "devreg did not recover within 10 s"
                await asyncio.sleep(0.05)
            recovered_after = time.monotonic() - back_at
            served_before = statuses[200]
            await asyncio.sleep(1)
            done.set()
            await asyncio.gather(*loaders)
        errors = server.errors_logged()
        warnings = server.logged("WARNING")

    # The figures, for `pytest -s`: requests sent, their statuses, time to recover.
    print(
        f"\nrestart under load: {sum(statuses.values())} requests, "
        f"{dict(sorted(statuses.items()))}, recovered {recovered_after:.2f} s after PostgreSQL"
    )
    assert set(statuses) <= {200, 201, 204, 503}, (statuses, errors)
    assert errors == []
    assert before_restart[503] > 0  # the outage was seen, and said why...
    assert {"database unreachable"} <= {warning["message"] for warning in warnings}
    assert unavailable_without_retry_after == 0
    assert statuses[200] > served_before  # ...and service resumed without restarting devreg
    assert recovered_after < 5


async def test_after_a_restart_one_lost_connection_replaces_the_whole_pool(
    cluster: EmbeddedCluster,
) -> None:
    """Every pooled connection died with the server; the first request that meets a dead one
    (a 503) has the pool replace all of them, not one 503 per connection."""
    await admin(cluster.url("postgres"), "CREATE DATABASE devreg")
    url = cluster.url("devreg").render_as_string(hide_password=False)
    settings = {"POOL_SIZE": "6", "MAX_OVERFLOW": "0", "MAX_REQUESTS_IN_PROGRESS": "32"}

    with devreg_process(DATABASE_URL=url, **settings) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as client:
            device = (await client.post(DEVICES, json={"name": "probe"})).json()
            await asyncio.gather(*(client.get(DEVICES) for _ in range(64)))  # fills the pool
            pooled = await _devreg_connections(cluster)
            await asyncio.to_thread(cluster.stop)
            await asyncio.to_thread(cluster.ensure_running)
            statuses = [
                (await client.get(f"{DEVICES}/{device['id']}")).status_code for _ in range(20)
            ]

    assert pooled >= 3
    assert statuses.count(503) <= 1, statuses
    assert set(statuses) <= {200, 503}


async def _devreg_connections(cluster: EmbeddedCluster) -> int:
    dsn = cluster.url("devreg").set(drivername="postgresql")
    connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'devreg' AND pid <> "
            "pg_backend_pid()"
        )
    finally:
        await connection.close()
    return count


@pytest.mark.parametrize(
    ("refusal", "sqlstate", "logged_as"),
    [
        pytest.param("CONNECTION LIMIT 0", "53300", "WARNING", id="out-of-connections"),
        pytest.param("PASSWORD 'rotated'", "28P01", "ERROR", id="password-rotated"),
    ],
)
async def test_a_database_refusing_new_connections_is_a_logged_503_on_every_path(
    server_url: URL,
    database_url: URL,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
    sqlstate: str,
    logged_as: str,
) -> None:
    """PostgreSQL refusing devreg a new connection (too many connections; a password rotated
    in the database but not in DATABASE_URL) says nothing about the request: a 503 whether
    the request's statement runs on the hot path or in a session, and the operator is told
    why. The session path answered 500, the hot path a 503 that logged nothing."""
    async with login_role(server_url, database_url, grant="SELECT") as url:
        role = url.username
        # One connection: once the first request has met it dead, every request must connect.
        settings = make_settings(url, pool_size=1, max_overflow=0)
        async with running(create_app(settings)) as app, api_client(app) as client:
            # Now the app knows the API is open (for AUTH_CACHE_TTL): the requests below reach
            # the database only with their own statements.
            assert (await client.get(f"{DEVICES}/1")).status_code == 404
            await admin(
                server_url,
                f"ALTER ROLE {role} {refusal}",
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            )
            caplog.set_level(logging.WARNING, logger="devreg.errors")
            responses = [
                await client.get(f"{DEVICES}/1"),  # the hot path, on the dead connection
                await client.post("/api/v1/users", json={"name": "ann"}),  # a session
                await client.get(f"{DEVICES}/1/changes"),  # a session's read
                await client.get(f"{DEVICES}/1"),  # the hot path, connecting
            ]

    for response in responses:
        assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
    # Every request that had to connect logged why: all but the first, and the first too when
    # the driver had seen its connection end before the request came (a busy machine's timing).
    logged = [(r.levelname, r.sqlstate) for r in caplog.records if hasattr(r, "sqlstate")]
    assert logged in ([(logged_as, sqlstate)] * 3, [(logged_as, sqlstate)] * 4)


async def refused_writes_and_a_read(
    url: URL, device: dict[str, Any]
) -> tuple[list[httpx.Response], httpx.Response]:
    """A write by every path to the database at `url` (a route's own statement, a hot-path
    update, the heartbeat, a bulk write and a user's creation, in a session), then a read."""
    async with running(create_app(make_settings(url))) as app, api_client(app) as client:
        device_url = f"{DEVICES}/{device['id']}"
        writes = [
            await client.post(DEVICES, json={"name": "pi"}),
            await client.patch(device_url, json={"name": "renamed"}),
            await client.post(f"{device_url}/heartbeat"),
            await client.post(f"{DEVICES}/bulk", json=[{"name": "pi"}]),
            await client.post("/api/v1/users", json={"name": "ann"}),
        ]
        return writes, await client.get(device_url)


def logged_refusals(caplog: pytest.LogCaptureFixture) -> set[tuple[str, str, str]]:
    return {
        (r.levelname, r.getMessage(), r.sqlstate) for r in caplog.records if hasattr(r, "sqlstate")
    }


async def test_a_read_only_database_is_a_logged_503_for_every_write(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby after a failover, or default_transaction_read_only for maintenance: a write
    is refused for a while, whichever path runs it. It was a 500."""
    settings = make_settings(committed_database_url)
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = await create_device(client)
    read_only = committed_database_url.update_query_dict(
        {"options": "-c default_transaction_read_only=on"}
    )
    caplog.set_level(logging.WARNING, logger="devreg.errors")

    writes, read = await refused_writes_and_a_read(read_only, device)

    for response in writes:
        assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
    assert read.json() == device
    assert logged_refusals(caplog) == {("WARNING", "database is read-only", "25006")}


async def test_a_role_without_a_privilege_is_a_logged_503_for_every_write(
    server_url: URL, committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A role granted reads alone (an operator's mistake): every write was a 500, logged as an
    unhandled error of one type or another, which told the operator nothing."""
    settings = make_settings(committed_database_url)
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = await create_device(client)
    caplog.set_level(logging.WARNING, logger="devreg.errors")

    async with login_role(server_url, committed_database_url, grant="SELECT") as url:
        writes, read = await refused_writes_and_a_read(url, device)

    for response in writes:
        assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
    assert read.json() == device
    assert logged_refusals(caplog) == {
        ("ERROR", "database denies devreg's role a privilege it needs", "42501")
    }


@asynccontextmanager
async def read_only(server_url: URL, database_url: URL) -> AsyncIterator[URL]:
    """`database_url` on a database that takes no writes: a standby, or maintenance."""
    yield database_url.update_query_dict({"options": "-c default_transaction_read_only=on"})


@asynccontextmanager
async def reads_granted(server_url: URL, database_url: URL) -> AsyncIterator[URL]:
    """`database_url` as a role granted reads alone."""
    async with login_role(server_url, database_url, grant="SELECT") as url:
        yield url


@pytest.mark.parametrize("refusing_writes", [read_only, reads_granted])
async def test_a_database_refusing_writes_serves_reads_to_tokens(
    server_url: URL, committed_database_url: URL, refusing_writes: Any
) -> None:
    """A token is verified by the statement that notes its use (an UPDATE of last_used_at),
    which a database taking no writes, or a role granted reads alone, refuses: once tokens were
    in use, every request was a 503, reads too, where without tokens reads were served."""
    settings = make_settings(committed_database_url)
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = await create_device(client)
        user = await create_user(client)
        created = await client.post(TOKENS, json={"user_id": user["id"], "admin": True})
    token = {"Authorization": f"Bearer {created.json()['token']}"}
    unknown = {"Authorization": "Bearer dvr_not-a-token"}

    async with (
        refusing_writes(server_url, committed_database_url) as url,
        running(create_app(make_settings(url))) as app,
        api_client(app) as client,
    ):
        read = await client.get(f"{DEVICES}/{device['id']}", headers=token)
        listed = await client.get(DEVICES, headers=token)
        write = await client.post(DEVICES, json={"name": "pi"}, headers=token)
        refused = await client.get(f"{DEVICES}/{device['id']}", headers=unknown)

    assert read.status_code == 200, read.text
    assert read.json() == device
    assert [item["id"] for item in listed.json()["items"]] == [device["id"]]
    assert_problem(write, 503)
    assert_problem(refused, 401)


async def test_a_lock_held_past_lock_timeout_is_a_503(committed_database_url: URL) -> None:
    """An operator's lock_timeout cuts a write's wait for a row locked elsewhere (a transaction
    left open in psql): the write was not done, and may be retried. It was a 500."""
    waits_briefly = committed_database_url.update_query_dict({"options": "-c lock_timeout=200"})
    holder_dsn = committed_database_url.set(drivername="postgresql")
    async with (
        running(create_app(make_settings(waits_briefly))) as app,
        api_client(app) as client,
    ):
        device = await create_device(client)
        url = f"{DEVICES}/{device['id']}"
        holder = await asyncpg.connect(holder_dsn.render_as_string(hide_password=False))
        try:
            async with holder.transaction():
                await holder.execute("SELECT FROM devices WHERE id = $1 FOR UPDATE", device["id"])
                writes = [
                    await client.patch(url, json={"name": "renamed"}),
                    await client.post(f"{url}/heartbeat"),
                    await client.patch(f"{DEVICES}/bulk", json=[{"id": device["id"], "name": "x"}]),
                ]
        finally:
            await holder.close()
        after = await client.get(url)

    for response in writes:
        body = assert_problem(response, 503)
        assert body["type"].endswith("timeout")
    assert after.json() == device


async def test_exports_recover_at_once_from_connections_lost_together(
    committed_database_url: URL,
) -> None:
    """The server ended every connection at once (a restart, pg_terminate_backend): the first
    request to meet a dead one is a 503, and the pool replaces the others before they are
    used. An export's stream learnt only of its own connection, so each dead connection cost
    an export of its own: a 503 per pooled connection, for as long as the pool held any."""
    settings = make_settings(committed_database_url, pool_size=4, max_overflow=0)
    async with running(create_app(settings)) as app, api_client(app) as client:
        await create_device(client)
        await asyncio.gather(*(client.get(f"{DEVICES}/export") for _ in range(4)))  # all in use
        await admin(
            committed_database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        # Ended, not still ending, before the first export, as after a restart (on a busy
        # machine a backend still ending as an export reached it cost a second 503).
        others = (
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 30
        while (await query(committed_database_url, others))[0]["n"] > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        statuses = [(await client.get(f"{DEVICES}/export")).status_code for _ in range(5)]

    assert statuses == [503, 200, 200, 200, 200]


async def test_a_server_that_stops_answering_is_a_503_within_the_statement_timeout(
    committed_database_url: URL,
) -> None:
    """PostgreSQL enforces STATEMENT_TIMEOUT itself, so a server that answers nothing (frozen,
    or cut off by the network) held requests for as long as it stayed silent. devreg now waits
    STATEMENT_TIMEOUT and a grace for an answer, then answers 503 and drops the connection;
    once the server answers again, so does devreg."""
    settings = make_settings(
        committed_database_url, statement_timeout=0.5, pool_size=2, max_overflow=0
    )
    async with running(create_app(settings)) as app, api_client(app) as client:
        device = await create_device(client)
        answers, waits = [], []
        for request in (
            client.post("/api/v1/users", json={"name": "ann"}),  # in a session
            client.get(f"{DEVICES}/{device['id']}"),  # the hot path
        ):
            async with _frozen_backends(committed_database_url):
                started = time.monotonic()
                answers.append(await asyncio.wait_for(request, 15))
                waits.append(time.monotonic() - started)
        again = await client.get(f"{DEVICES}/{device['id']}")

    for response in answers:
        assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
    assert max(waits) < 0.5 + ANSWER_GRACE_SECONDS + 2
    assert again.status_code == 200


async def test_readyz_answers_a_server_that_stops_answering_within_the_health_timeout(
    committed_database_url: URL,
) -> None:
    """HEALTH_TIMEOUT is how long /readyz waits for PostgreSQL: the check given up on, its
    connection's closing (SQLAlchemy waits 2 s more for a polite goodbye) was waited for too,
    so a silent server's 503 came HEALTH_TIMEOUT + 2 s after the probe asked."""
    settings = make_settings(
        committed_database_url, health_timeout=0.5, pool_size=2, max_overflow=0
    )
    async with running(create_app(settings)) as app, api_client(app) as client:
        async with _frozen_backends(committed_database_url):
            started = time.monotonic()
            response = await asyncio.wait_for(client.get("/readyz"), 15)
            waited = time.monotonic() - started
        again = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "error", "db": "unreachable"}
    assert waited < 0.5 + 1.5  # room for a busy machine, short of the 2 s more
    assert again.json() == {"status": "ok", "db": "reachable"}


@asynccontextmanager
async def _frozen_backends(url: URL) -> AsyncIterator[None]:
    """devreg's connections to the database at `url` stop answering, as a frozen server's."""
    rows = await query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'devreg'",
    )
    frozen = [row["pid"] for row in rows]
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


async def test_an_export_read_too_slowly_costs_its_own_connection_only(
    committed_database_url: URL,
) -> None:
    """COPY waits for its reader: a client taking the rows slower than STATEMENT_TIMEOUT and
    its grace allow ends the export (a 503 timeout) and its connection. It was taken for the
    server gone, and the pool's every other connection was dropped with it."""
    await admin(
        committed_database_url,
        "INSERT INTO devices (name, serial_number, model) SELECT 'device ' || g, 'SN-' || g, "
        "repeat('m', 90) FROM generate_series(1, 60000) AS g",
    )
    settings = make_settings(
        committed_database_url, statement_timeout=0.2, pool_size=3, max_overflow=0
    )
    engine = create_engine(committed_database_url, settings)
    backend = text("SELECT pg_backend_pid()")

    async def backends() -> set[int]:
        async def one() -> int:
            async with engine.connect() as connection:
                pid: int = (await connection.execute(backend)).scalar_one()
                await asyncio.sleep(0.2)  # held, so that each asks on a connection of its own
                return pid

        return set(await asyncio.gather(one(), one(), one()))

    async def read_slowly() -> None:
        async with session_scope(create_sessionmaker(engine)) as work:
            chunks = DeviceRepository(work).export(DeviceFilter(), as_json=False)
            await anext(chunks)
            await asyncio.sleep(0.2 + ANSWER_GRACE_SECONDS + 0.5)  # the reader stalls
            async for _ in chunks:
                pass

    try:
        before = await backends()
        with pytest.raises(StatementTimedOut):
            await read_slowly()
        after = await backends()
    finally:
        await engine.dispose()

    assert len(before) == 3
    # The export's connection went (the client's answer timeout), or stayed (PostgreSQL's own
    # timeout reached the client first, as under load it may): the others stayed either way.
    assert len(before & after) >= 2
