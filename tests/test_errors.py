"""Every failure is an RFC 9457 problem; requests carry an id and leave one log line."""

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import pytest
from fastapi import FastAPI, Request
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from devreg.app import create_app
from devreg.errors import DevregError, sqlstate_problem
from devreg.logs import request_logger
from tests.api import assert_problem
from tests.support import RunningApp, api_client, make_settings, running

SECRET = "hunter2"
SECRET_SQL = f"SELECT * FROM users WHERE password={SECRET}"
HUGE_NAME = "x" * 10_000
PROBLEM_BODY_MAX_BYTES = 2_000


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == request_logger.name]


@pytest.fixture
async def app_client(running_app: RunningApp) -> AsyncIterator[AsyncClient]:
    """The session app, for requests that never reach the database."""
    async with api_client(running_app) as client:
        yield client


@pytest.fixture
def fresh_app(database_url: URL) -> Callable[..., FastAPI]:
    def build(**overrides: object) -> FastAPI:
        return create_app(make_settings(database_url, **overrides))

    return build


class TestUnknownRoute:
    async def test_unknown_path_returns_404_problem(self, app_client: AsyncClient) -> None:
        response = await app_client.get("/no/such/route")

        body = assert_problem(response, 404)
        assert body["type"] == "about:blank"
        assert body["instance"] == "/no/such/route"

    @pytest.mark.parametrize(
        ("sent", "instance"),
        [
            ("/api/v1/devices/1%3F", "/api/v1/devices/1%3F"),
            ("/api/v1/devices/1%2F2", "/api/v1/devices/1%2F2"),
            ("/no/such%23route", "/no/such%23route"),
            ("/api/v1/devices/a%20b", "/api/v1/devices/a%20b"),
            ('/api/v1/devices/a"<b>', "/api/v1/devices/a%22%3Cb%3E"),
        ],
    )
    async def test_a_problems_instance_is_the_path_as_sent(
        self, app_client: AsyncClient, sent: str, instance: str
    ) -> None:
        """RFC 9457: `instance` is a URI reference. Written from the decoded path it named
        another resource (`/devices/1?` is device 1, `/devices/1/2` another path, `#route` a
        fragment), or none at all (a space, a quote)."""
        response = await app_client.get(sent)

        assert response.status_code in (404, 422), response.text
        assert response.json()["instance"] == instance


class TestWrongMethod:
    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [
            ("DELETE", "/livez", {"GET", "HEAD"}),
            ("POST", "/api/v1/devices/1", {"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
            ("PATCH", "/api/v1/device/1", {"GET", "HEAD", "PUT", "DELETE"}),
            # Not taken for a device's id: these are the collection's own paths.
            ("GET", "/api/v1/devices/bulk", {"POST", "PATCH", "DELETE"}),
            ("PUT", "/api/v1/devices/bulk", {"POST", "PATCH", "DELETE"}),
            ("DELETE", "/api/v1/devices/export", {"GET", "HEAD"}),
            ("POST", "/api/v1/devices/export", {"GET", "HEAD"}),
            # The docs' own files, served by a mounted app: its Allow was replaced by none.
            ("POST", "/static-offline-docs/swagger-ui.css", {"GET", "HEAD"}),
        ],
    )
    async def test_unsupported_method_returns_405_with_allow(
        self, app_client: AsyncClient, method: str, path: str, allowed: set[str]
    ) -> None:
        response = await app_client.request(method, path)

        assert_problem(response, 405)
        allow = {part.strip() for part in response.headers["allow"].split(",")}
        assert allow == allowed


class TestHead:
    @pytest.mark.parametrize(
        "path", ["/api/v1/devices/{id}", "/api/v1/devices", "/api/v1/devices/export", "/livez"]
    )
    async def test_head_is_a_get_without_its_body(self, client: AsyncClient, path: str) -> None:
        created = await client.post("/api/v1/devices", json={"name": "pi"})
        url = path.format(id=created.json()["id"])
        got = await client.get(url)

        head = await client.head(url)

        assert head.status_code == got.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("etag") == got.headers.get("etag")
        assert head.headers.get("content-length") == got.headers.get("content-length")

    async def test_head_of_a_missing_device_is_a_404(self, client: AsyncClient) -> None:
        response = await client.head("/api/v1/devices/999999")

        assert response.status_code == 404
        assert response.content == b""


class TestValidationError:
    @pytest.mark.parametrize(
        ("method", "path", "body", "loc"),
        [
            ("POST", "/api/v1/devices", {"name": HUGE_NAME}, ["body", "name"]),
            ("POST", "/api/v1/devices", {}, ["body", "name"]),
            ("POST", "/api/v1/devices", {"name": 42}, ["body", "name"]),
            ("POST", "/api/v1/device/", {"name": HUGE_NAME}, ["body", "name"]),
            ("GET", "/api/v1/devices/not-a-number", None, ["path", "device_id"]),
            ("GET", "/api/v1/devices?limit=0", None, ["query", "limit"]),
        ],
        ids=["too-long", "missing", "wrong-type", "tutorial-too-long", "bad-path", "bad-query"],
    )
    async def test_invalid_request_returns_422_problem_with_errors(
        self,
        client: AsyncClient,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        loc: list[str],
    ) -> None:
        response = await client.request(method, path, json=body)

        problem = assert_problem(response, 422)
        assert problem["errors"]
        assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])
        assert problem["errors"][0]["loc"] == loc
        assert problem["title"] == "Unprocessable Content"  # RFC 9110's, not RFC 7231's

    async def test_huge_value_not_echoed(self, client: AsyncClient) -> None:
        response = await client.post("/api/v1/devices", json={"name": HUGE_NAME})

        assert_problem(response, 422)
        assert len(response.content) < PROBLEM_BODY_MAX_BYTES
        assert "xxxxxxxxxx" not in response.text


def _raise_runtime_error() -> NoReturn:
    raise RuntimeError(f"secret {SECRET_SQL}")


def _raise_database_error() -> NoReturn:
    raise DBAPIError(SECRET_SQL, {"password": SECRET}, Exception(f"syntax error in {SECRET_SQL}"))


class TestUnhandledException:
    @pytest.fixture(params=[_raise_runtime_error, _raise_database_error], ids=["runtime", "db"])
    async def crashing_client(
        self, request: pytest.FixtureRequest, fresh_app: Callable[..., FastAPI]
    ) -> AsyncIterator[AsyncClient]:
        app = fresh_app()
        crash: Callable[[], NoReturn] = request.param

        async def crashing_endpoint() -> None:
            crash()

        app.add_api_route("/boom", crashing_endpoint)
        async with running(app) as started, api_client(started) as client:
            yield client

    async def test_crash_returns_generic_500_problem(self, crashing_client: AsyncClient) -> None:
        response = await crashing_client.get("/boom")

        body = assert_problem(response, 500)
        assert body["detail"] == DevregError.default_detail
        for leak in (SECRET, "SELECT", "Traceback", "RuntimeError", "DBAPIError"):
            assert leak not in response.text

    async def test_crash_logs_one_request_line_and_no_traceback(
        self, crashing_client: AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO):
            await crashing_client.get("/boom")

        assert [record.status for record in request_records(caplog)] == [500]  # type: ignore[attr-defined]
        for record in caplog.records:
            assert SECRET not in record.getMessage()
            assert record.exc_info is None
            assert record.exc_text is None
        assert SECRET not in caplog.text
        assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "statement",
    ["SELECT no_such_column FROM devices", "SELECT 1 WHERE 'x'::text"],
    ids=["undefined column", "datatype mismatch"],
)
async def test_a_statements_bug_on_a_migrated_database_is_a_500_not_a_migration(
    fresh_app: Callable[..., FastAPI], caplog: pytest.LogCaptureFixture, statement: str
) -> None:
    """A column missing (42703) or of another type (42804) is a 503 "not migrated" only while
    the database is behind: at this release's revision it is devreg's own bug, which was
    answered 503 with Retry-After and logged "run devreg db upgrade", which mends nothing."""
    app = fresh_app()

    async def buggy(request: Request) -> None:
        async with request.state.sessionmaker() as session:
            await session.execute(text(statement))

    app.add_api_route("/buggy", buggy)
    with caplog.at_level(logging.WARNING):
        async with running(app) as started, api_client(started) as client:
            response = await client.get("/buggy")

    assert_problem(response, 500)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["unhandled error"]


class TestRequestId:
    VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

    async def test_valid_sent_id_echoed(self, app_client: AsyncClient) -> None:
        response = await app_client.get("/livez", headers={"X-Request-ID": "abc-123"})

        assert response.headers["x-request-id"] == "abc-123"

    async def test_no_sent_id_gets_new_id_per_request(self, app_client: AsyncClient) -> None:
        ids = [(await app_client.get("/livez")).headers["x-request-id"] for _ in range(2)]

        assert all(self.VALID.fullmatch(request_id) for request_id in ids)
        assert ids[0] != ids[1]

    @pytest.mark.parametrize(
        "sent",
        ["a" * 300, "has spaces", "semi;colon", "<script>"],
        ids=["long", "sp", "sc", "html"],
    )
    async def test_invalid_sent_id_replaced(self, app_client: AsyncClient, sent: str) -> None:
        response = await app_client.get("/livez", headers={"X-Request-ID": sent})

        echoed = response.headers["x-request-id"]
        assert echoed != sent
        assert self.VALID.fullmatch(echoed)


class TestRequestLog:
    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            ("GET", "/livez", 200),
            ("GET", "/no/such/route", 404),
            ("DELETE", "/livez", 405),
            ("GET", "/api/v1/devices?limit=0", 422),
        ],
    )
    async def test_request_logs_one_line_with_outcome(
        self,
        app_client: AsyncClient,
        caplog: pytest.LogCaptureFixture,
        method: str,
        path: str,
        status: int,
    ) -> None:
        with caplog.at_level(logging.INFO):
            await app_client.request(method, path)

        [record] = request_records(caplog)
        fields = {
            name: getattr(record, name, None) for name in ("method", "path", "status", "client")
        }
        assert fields == {
            "method": method,
            "path": path.split("?")[0],
            "status": status,
            "client": "127.0.0.1",  # httpx's ASGI transport's
        }
        duration: Any = getattr(record, "duration_ms", None)
        assert isinstance(duration, float | int)
        assert duration >= 0


class TestPoolExhausted:
    async def test_no_free_connection_returns_503_then_recovers(
        self, fresh_app: Callable[..., FastAPI]
    ) -> None:
        app = fresh_app(pool_size=1, max_overflow=0, pool_timeout=0.3)
        async with running(app) as started, api_client(started) as client:
            async with started.state["engine"].connect() as held:
                await held.exec_driver_sql("select 1")
                began = time.monotonic()
                busy = await client.get("/api/v1/devices")
                elapsed = time.monotonic() - began

            recovered = await client.get("/api/v1/devices")

        assert_problem(busy, 503)
        assert busy.headers["retry-after"].isdigit()
        assert elapsed < 2
        assert recovered.status_code == 200


def test_a_value_postgresql_refuses_is_a_422_with_an_errors_list() -> None:
    """Every 422 has an `errors` list; this one (a data exception, SQLSTATE class 22) had none,
    knowing no field."""
    problem = sqlstate_problem("22003")  # numeric_value_out_of_range

    assert problem is not None
    assert problem.status == 422
    assert problem.extensions["errors"] == [
        {"loc": [], "msg": "A value in the request is not valid.", "type": "invalid_input"}
    ]


async def test_a_character_the_databases_encoding_lacks_is_a_422_saying_so(
    latin1_database_url: URL,
) -> None:
    """A LATIN1 database refused Ž and 🚀 (SQLSTATE 22P05) as "A value in the request is not
    valid.", saying neither what nor why."""
    app = create_app(make_settings(latin1_database_url))
    async with running(app) as started, api_client(started) as client:
        refused = await client.post("/api/v1/devices", json={"name": "Žluťoučký 🚀"})
        stored = await client.post("/api/v1/devices", json={"name": "café"})

    assert_problem(
        refused, 422, "A character in the request has no equivalent in the database's encoding."
    )
    assert stored.status_code == 201
    assert stored.json()["name"] == "café"
