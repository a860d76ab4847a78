"""HTTP tests of GET /devices/export: CSV and NDJSON, streamed by id, with the listing filters."""

import asyncio
import json
import logging
import time
from typing import Any

import asyncpg
import httpx
import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from devreg.app import create_app
from devreg.db.session import UnitOfWork
from devreg.errors import PoolExhausted
from tests.api import (
    DEVICES,
    assert_problem,
    bulk_create,
    create_device,
    create_user,
    stored_devices,
)
from tests.support import (
    EXPORT_HEADER,
    EXPORT_PARSERS,
    api_client,
    asyncpg_connection,
    devreg_process,
    export_view,
    make_settings,
    query,
    run_devreg,
    running,
)

EXPORT = f"{DEVICES}/export"
FORMATS = list(EXPORT_PARSERS)

# Text that CSV must quote or escape, and characters beyond ASCII: each must come back as is.
AWKWARD_TEXT = [
    pytest.param("a,b", id="comma"),
    pytest.param('say "hi"', id="quotes"),
    pytest.param('"', id="lone-quote"),
    pytest.param("line1\nline2", id="newline"),
    pytest.param("line1\r\nline2", id="crlf"),
    pytest.param("cr\ronly", id="carriage-return"),
    pytest.param("Ölfühler 温度 🌡🚀", id="unicode-emoji"),
    pytest.param("tab\there; semi", id="tab-semicolon"),
    pytest.param("\u2028sep\u0085nel", id="unicode-line-separators"),
    pytest.param("back\\slash", id="backslash"),
    pytest.param("=1+2", id="formula-like"),
]


# --- helpers -------------------------------------------------------------------------------


async def export(client: AsyncClient, params: Any = None) -> Response:
    response = await client.get(EXPORT, params=params)
    assert response.status_code == 200, response.text
    return response


async def exported(client: AsyncClient, format: str, params: Any = ()) -> list[dict[str, Any]]:
    """The records of an export in `format`, parsed and typed (see tests.support)."""
    response = await export(client, [("format", format), *params])
    return EXPORT_PARSERS[format](response.text)


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
class TestExportContent:
    async def test_every_device_is_exported_in_id_order(self, client, format):
        owner = await create_user(client, name="ann")
        await create_device(
            client,
            name="gw",
            serial_number="SN-1",
            model="Pi 5",
            status="retired",
            owner_id=owner["id"],
            tags=["lab", "eu"],
            attributes={"rack": 4, "ports": [1, 2], "meta": {"ok": True, "none": None}},
            last_seen_at="2024-05-06T07:08:09.123456+02:00",
        )
        bare = await create_device(client, name="bare")
        await create_device(client, name="third", tags=["x"])
        # A row updated is written anew at the table's end: the order is the export's own.
        await client.patch(f"{DEVICES}/{bare['id']}", json={"model": "m"})

        records = await exported(client, format)

        assert records == [export_view(device) for device in await stored_devices(client)]
        assert [record["id"] for record in records] == sorted(record["id"] for record in records)

    async def test_missing_values_are_empty(self, client, format):
        device = await create_device(client, name="bare")

        (record,) = await exported(client, format)

        assert record["id"] == device["id"]
        missing = ("serial_number", "model", "owner_id", "last_seen_at")
        assert {key: record[key] for key in missing} == dict.fromkeys(missing)
        assert (record["tags"], record["attributes"], record["version"]) == ([], {}, 1)

    @pytest.mark.parametrize("text", AWKWARD_TEXT)
    async def test_awkward_text_comes_back_exactly(self, client, format, text):
        device = await create_device(
            client,
            name=f"n {text} n",
            serial_number=f"s {text} s",
            model=f"m {text} m",
            tags=[f"t {text} t", "plain"],
            attributes={f"k {text}": f"v {text}", "list": [text]},
        )

        (record,) = await exported(client, format)

        assert record == export_view(device)
        assert record["name"] == f"n {text} n"
        assert record["attributes"] == {f"k {text}": f"v {text}", "list": [text]}

    async def test_no_devices_is_no_records(self, client, format):
        await create_device(client, status="active")

        assert await exported(client, format, [("status", "retired")]) == []

    async def test_more_devices_than_one_batch_are_all_exported(self, client, format):
        count = 5_001  # the export reads 5,000 rows at a time
        await bulk_create(client, [{"name": f"d{i}", "tags": ["t"]} for i in range(count)])

        records = await exported(client, format)

        assert len(records) == count
        assert [record["name"] for record in records] == [f"d{i}" for i in range(count)]
        ids = [record["id"] for record in records]
        assert ids == sorted(set(ids))


class TestExportFormats:
    @pytest.mark.parametrize("params", [{}, {"format": "csv"}])
    async def test_csv_is_the_default_and_starts_with_the_header(self, client, params):
        await create_device(client, name="pi")

        response = await export(client, params)

        lines = response.text.splitlines()
        assert lines[0] == EXPORT_HEADER
        assert lines[1].split(",")[1] == "pi"

    async def test_head_answers_the_headers_without_running_the_export(self, client, caplog):
        await create_device(client, name="pi")
        params = {"format": "ndjson", "status": "active"}
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            head = await client.head(EXPORT, params=params)
            read_for_head = _devices_read(caplog)
            get = await export(client, params)
        assert head.status_code == 200
        assert head.content == b""
        for header in ("content-type", "content-disposition"):
            assert head.headers[header] == get.headers[header]
        assert read_for_head == []
        assert _devices_read(caplog)  # the GET's: what would show the HEAD's, had it run one
        assert (await client.head(EXPORT, params={"format": "xml"})).status_code == 422

    async def test_empty_csv_is_the_header_only(self, client):
        response = await export(client, {"format": "csv"})

        assert response.text == EXPORT_HEADER + "\n"

    async def test_empty_ndjson_is_an_empty_body(self, client):
        response = await export(client, {"format": "ndjson"})

        assert response.content == b""

    async def test_ndjson_is_one_object_per_line(self, client):
        for name in ("a", "b", "c"):
            await create_device(client, name=f"multi\nline {name}")

        response = await export(client, {"format": "ndjson"})

        lines = response.text.split("\n")
        assert lines[-1] == ""
        assert len(lines) == 4

    @pytest.mark.parametrize(
        ("format", "content_type", "filename"),
        [
            ("csv", "text/csv; charset=utf-8", "devices.csv"),
            ("ndjson", "application/x-ndjson", "devices.ndjson"),
        ],
    )
    async def test_headers_name_the_type_and_file(self, client, format, content_type, filename):
        await create_device(client)

        response = await export(client, {"format": format})

        assert response.headers["content-type"] == content_type
        assert response.headers["content-disposition"] == f'attachment; filename="{filename}"'


class TestExportFilters:
    @pytest.fixture
    async def fleet(self, client) -> None:
        owner = await create_user(client, name="ann")
        devices = [
            ("Raspberry Pi 4", "active", ["lab", "eu"], {"rack": 4}, owner["id"]),
            ("Jetson Nano", "retired", ["lab"], {"rack": "4"}, None),
            ("Arduino Uno", "inactive", ["eu"], {"rack": 5}, owner["id"]),
            ("Raspberry Pi 5", "retired", [], {}, None),
        ]
        for name, status, tags, attributes, owner_id in devices:
            await create_device(
                client,
                name=name,
                status=status,
                tags=tags,
                attributes=attributes,
                owner_id=owner_id,
            )

    @pytest.mark.parametrize("format", FORMATS)
    @pytest.mark.parametrize(
        ("params", "names"),
        [
            pytest.param([], ["Raspberry Pi 4", "Jetson Nano", "Arduino Uno", "Raspberry Pi 5"]),
            pytest.param([("status", "retired")], ["Jetson Nano", "Raspberry Pi 5"], id="status"),
            pytest.param(
                [("status", "active"), ("status", "inactive")],
                ["Raspberry Pi 4", "Arduino Uno"],
                id="status-any-of",
            ),
            pytest.param([("tag", "lab")], ["Raspberry Pi 4", "Jetson Nano"], id="tag"),
            pytest.param([("tag", "lab"), ("tag", "eu")], ["Raspberry Pi 4"], id="tags-all-of"),
            pytest.param([("q", "rasberry")], ["Raspberry Pi 4", "Raspberry Pi 5"], id="q"),
            pytest.param([("attr.rack", "4")], ["Raspberry Pi 4"], id="attr-number"),
            pytest.param([("attr.rack", '"4"')], ["Jetson Nano"], id="attr-string"),
            pytest.param([("has_owner", "true")], ["Raspberry Pi 4", "Arduino Uno"], id="owner"),
            pytest.param(
                [("status", "retired"), ("q", "raspbery")], ["Raspberry Pi 5"], id="combined"
            ),
            pytest.param([("tag", "nowhere")], [], id="no-match"),
        ],
    )
    async def test_filters_choose_the_devices(self, client, fleet, format, params, names):
        records = await exported(client, format, params)

        assert [record["name"] for record in records] == names

    @pytest.mark.parametrize("parameter", ["limit", "cursor", "sort", "fields", "count", "colour"])
    async def test_unknown_parameter_is_a_bad_request(self, client, fleet, parameter):
        response = await client.get(EXPORT, params={parameter: "1"})

        problem = assert_problem(response, 400)
        assert parameter in problem["detail"]

    @pytest.mark.parametrize(
        "params",
        [
            pytest.param({"format": "xml"}, id="format-xml"),
            pytest.param({"format": ""}, id="format-empty"),
            pytest.param({"status": "broken"}, id="status-unknown"),
            pytest.param({"owner_id": "0"}, id="owner-zero"),
            pytest.param({"created_after": "yesterday"}, id="created-after-garbage"),
            pytest.param({"q": ""}, id="q-empty"),
        ],
    )
    async def test_invalid_value_is_refused(self, client, fleet, params):
        response = await client.get(EXPORT, params=params)

        assert_problem(response, 422)


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"max_exports_in_progress": 1}, id="max-exports"),
        # With the default limit of 4, two slow exports took both connections: every other
        # request waited out POOL_TIMEOUT for a 503.
        pytest.param({"pool_size": 2, "max_overflow": 0}, id="pool-of-two"),
    ],
)
async def test_an_export_past_max_exports_in_progress_is_refused_at_once(
    committed_database_url: URL, limits: dict[str, int]
) -> None:
    """An export holds a database connection until its last byte is sent, however slowly its
    client reads: exports without a limit could take every connection of the pool. One that
    waited for a turn would hold one of the worker's request turns meanwhile."""
    app = create_app(make_settings(committed_database_url, auth="off", pool_timeout=5, **limits))
    engine = create_async_engine(committed_database_url, poolclass=NullPool)
    try:
        async with running(app) as started, api_client(started) as client:
            async with engine.connect() as locker:
                # The first export's COPY waits for this lock, holding its turn.
                await locker.execute(text("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE"))
                first = asyncio.create_task(client.get(EXPORT))
                async with asyncio.timeout(30):
                    while not await _waiting_for_a_lock(locker):  # noqa: ASYNC110 - the server's state
                        await asyncio.sleep(0.05)
                asked = time.monotonic()
                second = await client.get(EXPORT)
                answered_in = time.monotonic() - asked
                elsewhere = await client.get("/api/v1/users")
                await locker.rollback()
            first_response = await first
            third = await client.get(EXPORT)
    finally:
        await engine.dispose()

    assert assert_problem(second, 503)["detail"] == PoolExhausted.default_detail
    assert second.headers["retry-after"]
    assert answered_in < 2  # not POOL_TIMEOUT's 5 s
    assert elsewhere.status_code == 200
    assert (first_response.status_code, third.status_code) == (200, 200)


async def _waiting_for_a_lock(connection: AsyncConnection) -> bool:
    waiting = await connection.scalar(
        text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )
    return bool(waiting)


async def test_a_timeout_before_the_first_chunk_is_a_503_problem(
    committed_database_url: URL,
) -> None:
    """The export waits for a lock another transaction holds on the devices, past its time."""
    app = create_app(make_settings(committed_database_url, statement_timeout=0.1))
    holder = await asyncpg_connection(committed_database_url)
    try:
        async with running(app) as started, api_client(started) as client, holder.transaction():
            await holder.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
            response = await client.get(EXPORT)
    finally:
        await holder.close()

    assert_problem(response, 503)
    assert response.headers["retry-after"]


async def test_a_client_leaving_an_export_early_leaves_the_server_as_it_was(
    committed_database_url: URL,
) -> None:
    """The COPY cut off was cancelled inside asyncpg, whose connection then failed on the COPY's
    next message: an AttributeError logged, and the connection, back in the pool, a 503 or 500
    for the next request. Now it is closed and left out of the pool."""
    url = committed_database_url.render_as_string(hide_password=False)
    seeded = run_devreg("seed", "--devices", "50000", "--users", "10", DATABASE_URL=url)
    assert seeded.returncode == 0, seeded.stderr
    # One connection, so the export's is the next request's.
    with devreg_process(DATABASE_URL=url, POOL_SIZE="1", MAX_OVERFLOW="0") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            for _ in range(3):
                async with client.stream("GET", f"{DEVICES}/export") as export:
                    await anext(export.aiter_bytes())
                    await asyncio.sleep(0.5)  # the server's chunks in flight fill up
                # hung up, mid-stream
            after = [(await client.get(f"{DEVICES}/1")).status_code for _ in range(5)]
            whole = await client.get(f"{DEVICES}/export", params={"format": "ndjson"})
        errors = server.errors_logged()

    assert after == [200] * 5
    assert len(whole.text.splitlines()) == 50_000
    assert errors == []


def _devices_read(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The statements logged so far that read the devices."""
    return [
        record.getMessage() for record in caplog.records if "FROM devices" in record.getMessage()
    ]


@pytest.mark.parametrize("format", ["csv", "ndjson"])
async def test_an_export_is_planned_to_stream_its_rows_as_they_are_read(
    client: AsyncClient, connection: AsyncConnection, format: str
) -> None:
    """With parallel plans costed as cheap (a large table's case), the NDJSON export was planned
    as a parallel scan gathered by a sort: nothing sent until every row was read and sorted (on
    a large table the plan without workers reads the id index in order)."""
    await bulk_create(client, [{"name": f"d{i}"} for i in range(3_000)])
    await connection.execute(text("ANALYZE devices"))
    for setting in (
        "parallel_setup_cost = 0",
        "parallel_tuple_cost = 0",
        "min_parallel_table_scan_size = 0",
        "min_parallel_index_scan_size = 0",
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_level = notice",
        "client_min_messages = notice",
    ):
        await connection.execute(text(f"SET LOCAL {setting}"))
    await connection.execute(text("LOAD 'auto_explain'"))
    plans: list[str] = []
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None

    def listen(_: object, message: Any) -> None:
        plans.append(message.message)

    raw.add_log_listener(listen)
    try:
        assert len(await exported(client, format)) == 3_000
    finally:
        raw.remove_log_listener(listen)

    (plan,) = [plan for plan in plans if "COPY" in plan]
    assert "Gather" not in plan, plan


async def test_an_export_outside_a_test_transaction_has_its_plans_set(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The setting was made on a connection in no transaction (the server's, unlike a test's):
    PostgreSQL warned that SET LOCAL needs one, and the export ran as if never set."""
    seen: list[str] = []
    copy_from_query = asyncpg.Connection.copy_from_query

    async def looking_first(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
        seen.append(await self.fetchval("SHOW max_parallel_workers_per_gather"))
        return await copy_from_query(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_from_query", looking_first)
    app = create_app(make_settings(committed_database_url, auth="off"))
    async with running(app) as started, api_client(started) as client:
        response = await client.get(EXPORT, params={"format": "ndjson"})

    assert response.status_code == 200
    assert seen == ["0"]


async def test_an_export_whose_connection_is_gone_once_read_ends_without_an_error(
    committed_database_url: URL, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database gone after the rows were read (stopped, or the server ending and cancelling
    the COPY): the rollback that ends the export's work failed, and was logged as an unhandled
    error although the client had every row. The connection leaves the pool instead."""
    rollback = UnitOfWork.rollback

    async def rollback_once_gone(work: UnitOfWork) -> None:
        if work.in_transaction():
            pid = (await work.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await query(committed_database_url, f"SELECT pg_terminate_backend({pid})")
        await rollback(work)

    app = create_app(make_settings(committed_database_url, auth="off", pool_size=1, max_overflow=0))
    async with running(app) as started, api_client(started) as client:
        await create_device(client, name="pi")
        monkeypatch.setattr(UnitOfWork, "rollback", rollback_once_gone)
        with caplog.at_level(logging.WARNING):
            exported = await client.get(EXPORT, params={"format": "ndjson"})
        monkeypatch.undo()
        after = await client.get(f"{DEVICES}/1")

    assert [line["name"] for line in map(json.loads, exported.text.splitlines())] == ["pi"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert after.status_code == 200, after.text
