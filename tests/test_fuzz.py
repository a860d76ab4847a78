"""Fuzzing the HTTP API from its own OpenAPI schema with Schemathesis.

Every operation in `/openapi.json` gets requests generated from its schema, both valid ones
(positive) and ones that break it (negative), sent over ASGI to the app of the `client`
fixture (a real PostgreSQL database). Every response must:

- never be a server error (5xx);
- have a status code the operation documents;
- have a content type the operation documents for that status;
- match the schema the operation documents for that status and content type.

Bounded for CI: a fixed number of examples per operation and mode, no deadline, derandomized
(the same requests on every run for a given schema: Schemathesis also draws on constants found
in the schema), no example database and no shrinking (a failure is reported with the request
that caused it, as a curl command). Each example runs inside a savepoint that
is rolled back afterwards, and the test's own transaction is rolled back at the end, as for
every other test: nothing the fuzzer writes is left behind.

Path ids are drawn from the schema, or (at the draw of a boolean) replaced by the id of a user
or device the test made first, so that the routes' success paths are fuzzed too, not only 404;
with valid data, so are the ids in request bodies (owner_id, user_id, bulk ids).
"""

from datetime import datetime
from typing import Any

import pytest
import schemathesis
from httpx import AsyncClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from devreg.app import create_app
from tests.api import create_device, create_user
from tests.support import RunningApp, forget_authentication, make_settings

EXAMPLES = 15
"""Examples per operation and generation mode."""

BASE_URL = "http://localhost"  # as tests.support.api_client

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _documented_operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every documented operation, for collection: the schema of an
    app built like the fixtures' (its database URL is never connected to; only the schema is
    read). The test itself fuzzes the schema the running app serves. Operations that take no
    input at all have nothing to break, so no negative mode."""
    placeholder = make_url("postgresql+asyncpg://devreg@127.0.0.1:1/devreg")
    document = create_app(make_settings(placeholder)).openapi()
    cases = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


OPERATIONS = _documented_operations()


@pytest.fixture(scope="session")
def api_schema(running_app: RunningApp) -> schemathesis.BaseSchema:
    """The OpenAPI schema of the app under test, as it serves it."""
    return schemathesis.openapi.from_dict(running_app.app.openapi())


@pytest.fixture
async def known_ids(client: AsyncClient) -> dict[str, int]:
    """A user owning a device, made before fuzzing: ids the fuzzer can hit."""
    user = await create_user(client, name="fuzz-owner", email="fuzz@example.org")
    device = await create_device(
        client, name="fuzz-device", serial_number="SN-FUZZ", owner_id=user["id"], tags=["fuzz"]
    )
    return {"user_id": user["id"], "device_id": device["id"]}


def _aim_at_known_rows(
    case: schemathesis.Case, mode: GenerationMode, ids: dict[str, int], data: st.DataObject
) -> None:
    """Point some of the case's ids at rows that exist, each at the draw of a boolean.

    In any mode the path ids; with valid data only, also the ids in the body (owner_id,
    user_id, the ids of the bulk routes), which schema-generated data almost never hits.
    """
    path_parameters = case.path_parameters or {}
    for name, value in ids.items():
        if name in path_parameters and data.draw(st.booleans(), label=f"known {name}"):
            path_parameters[name] = value
    if mode is not GenerationMode.POSITIVE or not data.draw(st.booleans(), label="known body"):
        return
    body = case.body
    if isinstance(body, dict):
        for name in ("owner_id", "user_id"):
            if name in body:
                body[name] = ids["user_id"]
    elif isinstance(body, list) and body:
        if all(isinstance(item, int) for item in body):
            case.body = [ids["device_id"]]
        elif isinstance(body[0], dict) and "id" in body[0]:
            case.body = [{**body[0], "id": ids["device_id"]}]


def _wire(header_value: str) -> bytes:
    """A header value as sent: Latin-1 (what HTTP's obs-text is read as), or else UTF-8 bytes.
    httpx would take only ASCII from a str, and Schemathesis sends the rest too."""
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:
        return header_value.encode()


def _request_arguments(case: schemathesis.Case) -> dict[str, Any]:
    """The case as arguments for httpx's request(): Schemathesis prepares them for requests."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    arguments: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": {name: _wire(value) for name, value in (kwargs.get("headers") or {}).items()},
        "params": kwargs.get("params") or None,
        "cookies": kwargs.get("cookies") or None,
    }
    if "json" in kwargs:
        arguments["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        arguments["content" if isinstance(data, bytes | str) else "data"] = data
    return arguments


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    OPERATIONS,
    ids=[f"{method} {path} {mode}" for method, path, mode in OPERATIONS],
)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_responses_conform_to_the_schema(
    running_app: RunningApp,
    client: AsyncClient,
    connection: AsyncConnection,
    api_schema: schemathesis.BaseSchema,
    known_ids: dict[str, int],
    method: str,
    path: str,
    mode: GenerationMode,
    data: st.DataObject,
) -> None:
    operation = api_schema[path][method]
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    _aim_at_known_rows(case, mode, known_ids, data)
    savepoint = await connection.begin_nested()
    try:
        response = await client.request(**_request_arguments(case))
    finally:
        # Each example starts from the same data: what this one wrote is undone, and so is
        # what the app remembers of it (as the client fixture does between tests).
        await savepoint.rollback()
        forget_authentication(running_app.app)
    case.validate_response(response, checks=CHECKS)


# Timestamps at the ends of what Python and PostgreSQL can hold. The schema says `date-time`:
# each must come back with its offset, the instant it was sent, in every response that shows it.
EDGE_TIMESTAMPS = [
    pytest.param("0001-01-01T00:00:00.000001Z", id="first-instant-plus-1us"),
    pytest.param("9999-12-31T23:59:59.999998Z", id="last-instant-minus-1us"),
]
# The very first and last instants are what asyncpg writes as -infinity and infinity; an offset
# can push an instant out of range altogether. Both are refused rather than stored otherwise.
UNSTORABLE_TIMESTAMPS = [
    pytest.param("0001-01-01T00:00:00Z", id="first-instant"),
    pytest.param("9999-12-31T23:59:59.999999Z", id="last-instant"),
    pytest.param("0001-01-01T00:30:00+01:00", id="before-the-first-instant"),
    pytest.param("9999-12-31T23:30:00-01:00", id="after-the-last-instant"),
]


@pytest.mark.parametrize("when", UNSTORABLE_TIMESTAMPS)
async def test_unstorable_timestamps_are_422(client: AsyncClient, when: str) -> None:
    created = await client.post("/api/v1/devices", json={"name": "edge", "last_seen_at": when})
    assert created.status_code == 422, created.text
    error = created.json()["errors"][0]
    assert error["loc"] == ["body", "last_seen_at"]
    # The bounds it names are the very instants refused (it named 23:59:59, a second early).
    assert error["msg"].endswith(
        "must be after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z"
    )
    listed = await client.get("/api/v1/devices", params={"last_seen_after": when})
    assert listed.status_code == 422, listed.text


@pytest.mark.parametrize("when", EDGE_TIMESTAMPS)
async def test_edge_timestamps_conform_to_the_schema(
    client: AsyncClient, api_schema: schemathesis.BaseSchema, when: str
) -> None:
    create = api_schema["/api/v1/devices"]["POST"].Case(body={"name": "edge", "last_seen_at": when})
    created = await client.request(**_request_arguments(create))
    create.validate_response(created, checks=CHECKS)
    assert created.status_code == 201, created.text
    device = created.json()
    assert datetime.fromisoformat(device["last_seen_at"]) == datetime.fromisoformat(when)

    listing = api_schema["/api/v1/devices"]["GET"].Case(query={"sort": "last_seen_at"})
    listed = await client.request(**_request_arguments(listing))
    listing.validate_response(listed, checks=CHECKS)
    assert [item["last_seen_at"] for item in listed.json()["items"]] == [device["last_seen_at"]]


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/v1/devices", "id"),
        ("/api/v1/devices", "name,owner"),
        ("/api/v1/users", "email"),
        ("/api/v1/changes", "action,object_id"),
        ("/api/v1/devices/{device_id}/changes", "at"),
        ("/api/v1/users/{user_id}/devices", "id,tags"),
    ],
)
async def test_sparse_items_conform_to_the_schema(
    client: AsyncClient,
    api_schema: schemathesis.BaseSchema,
    known_ids: dict[str, int],
    path: str,
    fields: str,
) -> None:
    """Items with only the `fields=` asked for: the schema documented every item whole."""
    case = api_schema[path]["GET"].Case(path_parameters=known_ids, query={"fields": fields})
    response = await client.request(**_request_arguments(case))

    assert response.status_code == 200
    items = response.json()["items"]
    assert items
    assert all(item.keys() == set(fields.split(",")) for item in items)
    case.validate_response(response, checks=[response_schema_conformance])
