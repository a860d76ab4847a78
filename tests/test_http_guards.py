"""What bounds and guards every request: body size limits, security headers, CORS."""

import asyncio
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from fastapi.responses import StreamingResponse
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.errors import StatementTimedOut
from tests.api import DEVICES, assert_problem, create_device, stored_devices
from tests.support import api_client, make_settings, running, served_under

MIB = 1024 * 1024


async def test_a_body_over_the_limit_is_a_413_and_nothing_is_written(client: AsyncClient) -> None:
    body = {"name": "big", "attributes": {"blob": "a" * MIB}}
    problem = assert_problem(await client.post(DEVICES, json=body), 413)
    assert problem["title"] == "Content Too Large"  # RFC 9110's, not RFC 7231's
    assert await stored_devices(client) == []


@pytest.mark.parametrize(
    "encodings",
    [["gzip"], ["br, gzip"], ["identity", "gzip"]],  # the last on two lines: one was read
    ids=["gzip", "two-on-a-line", "two-lines"],
)
async def test_a_compressed_body_is_a_415_and_nothing_is_written(
    client: AsyncClient, encodings: list[str]
) -> None:
    body = gzip.compress(json.dumps({"name": "packed"}).encode())
    headers = [("content-type", "application/json")]
    headers += [("content-encoding", encoding) for encoding in encodings]

    response = await client.post(DEVICES, content=body, headers=headers)

    assert "uncompressed" in assert_problem(response, 415)["detail"]
    assert response.headers["accept-encoding"] == "identity"
    assert await stored_devices(client) == []


@pytest.mark.parametrize("codings", ["gzip, chunked", "deflate,chunked", "x-unknown, chunked"])
async def test_a_body_in_a_transfer_coding_other_than_chunked_is_a_501_and_nothing_is_written(
    client: AsyncClient, codings: str
) -> None:
    """RFC 9112, 6.1. The server decodes chunked alone and passed the rest on as it came: a body
    compressed in transit was a 422 saying it was not UTF-8."""
    device = await create_device(client)
    body = gzip.compress(json.dumps({"name": "packed"}).encode())
    headers = {"content-type": "application/json", "transfer-encoding": codings}
    for method, url in [("POST", DEVICES), ("PATCH", f"{DEVICES}/{device['id']}")]:
        response = await client.request(method, url, content=body, headers=headers)
        assert "Transfer-Encoding" in assert_problem(response, 501)["detail"]
    assert await stored_devices(client) == [device]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", "", None],
)
async def test_a_body_not_sent_as_json_is_a_415_and_nothing_is_written(
    client: AsyncClient, content_type: str | None
) -> None:
    """It was a 422 saying the body was not an object, about a body that was valid JSON."""
    device = await create_device(client)
    body = b'{"name": "typed"}'
    headers = {} if content_type is None else {"content-type": content_type}
    for method, url in [
        ("POST", DEVICES),
        ("PUT", f"{DEVICES}/{device['id']}"),
        ("PATCH", f"{DEVICES}/{device['id']}"),
        ("POST", "/api/v1/users"),
    ]:
        response = await client.request(method, url, content=body, headers=headers)
        assert "JSON" in assert_problem(response, 415)["detail"]
        assert ("accept-patch" in response.headers) == (method == "PATCH")
    assert await stored_devices(client) == [device]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"],
)
async def test_json_by_any_of_its_names_is_read(client: AsyncClient, content_type: str) -> None:
    device = await create_device(client)
    response = await client.patch(
        f"{DEVICES}/{device['id']}",
        content=b'{"model": "m"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "m"


async def test_a_body_of_a_json_type_of_its_own_is_read_as_json_but_for_a_patch(
    client: AsyncClient,
) -> None:
    response = await client.post(
        DEVICES, content=b'{"name": "n"}', headers={"content-type": "application/vnd.devreg+json"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/merge-patch+json", b'{"attributes": {"rack": null}}'),
        ("application/json-patch+json", b'[{"op": "remove", "path": "/attributes/rack"}]'),
    ],
)
async def test_a_patch_format_of_its_own_is_a_415_not_read_as_plain_json(
    client: AsyncClient, content_type: str, body: bytes
) -> None:
    """A merge patch was accepted (and advertised) but read as plain JSON: the device's
    attributes were replaced by `{"rack": null}`, its other members lost."""
    device = await create_device(client, attributes={"rack": 4, "row": "b"})

    response = await client.patch(
        f"{DEVICES}/{device['id']}", content=body, headers={"content-type": content_type}
    )

    assert_problem(response, 415)
    assert response.headers["accept-patch"] == "application/json"
    assert await stored_devices(client) == [device]


async def test_bulk_writes_take_bodies_beyond_the_general_limit(client: AsyncClient) -> None:
    items = [{"name": f"d{index}", "attributes": {"pad": "a" * 300}} for index in range(5000)]
    response = await client.post(f"{DEVICES}/bulk", json=items)
    assert response.status_code == 201, response.text
    assert len(response.json()["ids"]) == 5000


@pytest.fixture
def root_path() -> str:
    """The path prefix small_limits' app is served under: none, unless a test is parametrized
    with one."""
    return ""


@pytest.fixture
async def small_limits(committed_database_url: URL, root_path: str) -> AsyncIterator[AsyncClient]:
    """A client of an app with small body limits, served as uvicorn serves it under
    `root_path`."""
    settings = make_settings(
        committed_database_url, max_body_size=2048, max_bulk_body_size=8192, body_timeout=0.5
    )
    async with (
        running(create_app(settings)) as app,
        api_client(served_under(root_path, app)) as client,
    ):
        yield client


async def test_a_body_of_exactly_the_limit_is_taken(small_limits: AsyncClient) -> None:
    body = b'{"name": "x"}'.ljust(2048)

    async def streamed() -> AsyncIterator[bytes]:
        yield body[:1000]
        yield body[1000:]

    json = {"content-type": "application/json"}
    sized = await small_limits.post(DEVICES, content=body, headers=json)
    unsized = await small_limits.post(DEVICES, content=streamed(), headers=json)

    assert [sized.status_code, unsized.status_code] == [201, 201], unsized.text


async def test_a_streamed_body_is_cut_off_at_the_limit(small_limits: AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "x", "attributes": {"blob": "'
        for _ in range(10):
            yield b"a" * 1024
        yield b'"}}'

    response = await small_limits.post(
        DEVICES, content=chunks(), headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 413)
    assert "2048 bytes" in problem["detail"]


async def test_a_body_that_stops_arriving_is_a_408_and_nothing_is_written(
    small_limits: AsyncClient,
) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        await asyncio.sleep(30)
        yield b'x"}'

    started = time.monotonic()
    response = await small_limits.post(
        DEVICES, content=stalled(), headers={"content-type": "application/json"}
    )

    assert "0.5 seconds" in assert_problem(response, 408)["detail"]
    assert time.monotonic() - started < 5
    assert await stored_devices(small_limits) == []


@pytest.mark.parametrize("root_path", ["", "/devreg"])
async def test_bulk_routes_have_their_own_limit(small_limits: AsyncClient, root_path: str) -> None:
    """Under a root path, which uvicorn puts at the start of the path, the bulk routes had
    the general limit."""
    within = [{"name": f"d{index}"} for index in range(200)]  # about 3 KiB
    assert (await small_limits.post(f"{DEVICES}/bulk", json=within)).status_code == 201
    beyond = await small_limits.post(f"{DEVICES}/bulk", json=[{"name": "d"}] * 1000)
    assert "8192 bytes" in assert_problem(beyond, 413, root_path=root_path)["detail"]


async def test_only_the_bulk_path_itself_has_the_bulk_limit(small_limits: AsyncClient) -> None:
    body = {"name": "x", "attributes": {"blob": "a" * 4096}}
    for path in (f"{DEVICES}/bulkx", f"{DEVICES}/bulk.json"):
        assert (
            "2048 bytes" in assert_problem(await small_limits.put(path, json=body), 413)["detail"]
        )


async def test_every_response_carries_the_security_headers(client: AsyncClient) -> None:
    for response in (
        await client.get("/livez"),
        await client.get(f"{DEVICES}/999999"),
        await client.post(DEVICES, json={"name": ""}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "access-control-allow-origin" not in response.headers


async def test_a_response_must_be_revalidated_before_a_cache_uses_it(client: AsyncClient) -> None:
    """Without Cache-Control, a shared cache in front of an open API may keep a device as long
    as its heuristics like (RFC 9111, 4.2.2). (A new token's no-store stays: tests/auth.)"""
    device = await create_device(client)
    url = f"{DEVICES}/{device['id']}"
    read = await client.get(url)
    revalidated = await client.get(url, headers={"If-None-Match": read.headers["etag"]})

    assert read.headers["cache-control"] == "no-cache"
    assert revalidated.status_code == 304
    assert revalidated.headers["cache-control"] == "no-cache"
    assert (await client.get(DEVICES)).headers["cache-control"] == "no-cache"


async def test_cross_origin_calls_are_allowed_only_from_the_configured_origins(
    committed_database_url: URL,
) -> None:
    settings = make_settings(committed_database_url, cors_origins="https://ui.example, https://b")
    assert settings.cors_origins == ["https://ui.example", "https://b"]
    preflight = {"access-control-request-method": "PATCH"}
    async with running(create_app(settings)) as app, api_client(app) as client:
        allowed = await client.options(
            f"{DEVICES}/1", headers={"origin": "https://ui.example", **preflight}
        )
        refused = await client.options(
            f"{DEVICES}/1", headers={"origin": "https://evil.example", **preflight}
        )
        read = await client.get("/livez", headers={"origin": "https://ui.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-origin" not in refused.headers
    assert_problem(refused, 400, "Disallowed CORS origin")
    assert "ETag" in read.headers["access-control-expose-headers"]


async def test_a_configured_origin_may_reach_a_server_on_a_private_network(
    browser_client: AsyncClient,
) -> None:
    """A browser asking first whether a public page may call a server on loopback or a private
    address (Private Network Access) got a 400: every non-simple call from a configured origin
    failed there."""
    preflight = {
        "access-control-request-method": "PATCH",
        "access-control-request-private-network": "true",
    }

    response = await browser_client.options(f"{DEVICES}/1", headers=preflight)

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-private-network"] == "true"
    assert response.headers["access-control-allow-origin"] == "https://ui.example"


async def test_a_refused_preflight_is_a_problem_naming_what_was_refused(
    browser_client: AsyncClient,
) -> None:
    preflight = {"access-control-request-method": "TRACE", "access-control-request-headers": "x-a"}

    response = await browser_client.options(f"{DEVICES}/1", headers=preflight)

    assert_problem(response, 400, "Disallowed CORS method, headers")
    assert response.headers["access-control-allow-origin"] == "https://ui.example"


@pytest.mark.parametrize(("method", "status"), [("PATCH", 200), ("TRACE", 400)])
async def test_a_preflight_passes_the_edge_as_every_request_does(
    browser_client: AsyncClient, caplog: pytest.LogCaptureFixture, method: str, status: int
) -> None:
    """Answered by the CORS middleware, a preflight still has the security headers, a request
    id and its log line: the CORS middleware used to sit outside the edge and answer first."""
    preflight = {"access-control-request-method": method, "x-request-id": "preflight-1"}

    with caplog.at_level(logging.INFO, logger="devreg.request"):
        response = await browser_client.options(f"{DEVICES}/1", headers=preflight)

    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == "https://ui.example"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-request-id"] == "preflight-1"
    logged = [record for record in caplog.records if record.name == "devreg.request"]
    assert [(record.method, record.status) for record in logged] == [("OPTIONS", status)]


@pytest.fixture
async def browser_client(committed_database_url: URL) -> AsyncIterator[AsyncClient]:
    settings = make_settings(
        committed_database_url, cors_origins="https://ui.example", max_body_size=2048
    )
    async with running(create_app(settings)) as app, api_client(app) as client:
        client.headers["origin"] = "https://ui.example"
        yield client


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", "content-type, idempotency-key"), ("GET", "x-request-id"), ("HEAD", "if-none-match")],
)
async def test_a_browser_may_send_every_header_the_api_reads(
    browser_client: AsyncClient, method: str, headers: str
) -> None:
    preflight = {"access-control-request-method": method, "access-control-request-headers": headers}

    response = await browser_client.options(DEVICES, headers=preflight)

    assert response.status_code == 200, response.text


async def test_a_browser_reads_the_edges_own_answers(browser_client: AsyncClient) -> None:
    too_large = await browser_client.post(DEVICES, json={"name": "x", "blob": "a" * 4096})
    ordinary = await browser_client.get("/livez")

    assert_problem(too_large, 413)
    assert too_large.headers["access-control-allow-origin"] == "https://ui.example"
    exposed = ordinary.headers["access-control-expose-headers"]
    assert "Idempotent-Replayed" in exposed


async def test_a_streamed_response_that_breaks_off_is_logged_as_what_broke_it(
    database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """An export cut by a statement timeout after its first rows: the client sees the body end
    early (no last chunk); the log said "unhandled error" with Starlette's RuntimeError."""

    async def breaking() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first rows\n"
            raise StatementTimedOut

        return StreamingResponse(chunks(), media_type="text/csv")

    app = create_app(make_settings(database_url))
    app.add_api_route("/api/v1/breaking", breaking)
    sent: list[dict[str, object]] = []

    requested = asyncio.Event()

    async def receive() -> dict[str, object]:
        if requested.is_set():  # the client stays connected, reading
            await asyncio.Event().wait()
        requested.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    path = "/api/v1/breaking"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [], "client": ("127.0.0.1", 1), "server": ("localhost", 80),
    }  # fmt: skip
    with caplog.at_level(logging.INFO):
        async with running(app) as started:
            await started(scope, receive, send)  # type: ignore[arg-type]

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"first rows\n", "more_body": True}
    cut = [r for r in caplog.records if r.name == "devreg.errors"]
    assert [(r.levelname, r.getMessage(), r.error_type) for r in cut] == [
        ("WARNING", "response cut short", "StatementTimedOut")
    ]
    (line,) = [r for r in caplog.records if r.name == "devreg.request"]
    assert (line.status, line.incomplete) == (200, True)


async def test_only_a_response_that_did_not_end_is_logged_incomplete(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="devreg.request"):
        for method in ("GET", "HEAD"):
            await client.request(method, f"{DEVICES}/export")
        await client.get(f"{DEVICES}/1")

    lines = [r for r in caplog.records if r.name == "devreg.request"]
    assert [(r.status, getattr(r, "incomplete", False)) for r in lines] == [
        (200, False),
        (200, False),
        (404, False),
    ]


async def test_a_422_lists_its_first_ten_thousand_errors_and_counts_the_rest(
    client: AsyncClient,
) -> None:
    """A body of 80,000 unknown keys (within the size limit) was answered with 7 MB listing each,
    built in seconds while the worker did nothing else."""
    body = {"name": "n", **{f"k{index}": 0 for index in range(20_000)}}

    response = await client.post(DEVICES, json=body)

    problem = assert_problem(response, 422)
    assert len(problem["errors"]) == 10_000
    assert problem["errors_not_listed"] == 10_000
    assert problem["detail"].endswith("(and 19999 more)")
    assert await stored_devices(client) == []


async def test_a_422_with_few_errors_lists_them_all(client: AsyncClient) -> None:
    problem = assert_problem(await client.post(DEVICES, json={"name": "n", "a": 1, "b": 2}), 422)

    assert [error["loc"] for error in problem["errors"]] == [["body", "a"], ["body", "b"]]
    assert "errors_not_listed" not in problem
    assert problem["detail"].endswith("(and 1 more)")
