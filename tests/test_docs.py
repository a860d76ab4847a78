"""The interactive docs work offline: their assets come from a Python package, not a CDN."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
from httpx import AsyncClient
from pydantic import TypeAdapter, ValidationError

from devreg.schemas import Duration


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets(client: AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        fetched = await client.get(asset)
        assert fetched.status_code == 200, asset


async def test_the_redoc_page_may_start_the_worker_its_search_runs_in(
    client: AsyncClient,
) -> None:
    """Redoc's search runs in a worker made from a blob: URL; the policy's script-src, which
    a worker falls back to, refused it, and the search found nothing."""
    page = await client.get("/redoc")
    scripts = [await client.get(src) for src in re.findall(r'<script src="([^"]+)"', page.text)]
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["content-security-policy"].split(";")
        if directive.strip()
    )

    assert any("createObjectURL" in script.text and "Worker" in script.text for script in scripts)
    assert "blob:" in policy["worker-src"].split()


@pytest.mark.parametrize("sent", ["bytes=abc", "bytes=5-2", "bytes=99999999-", "bytes=0-9"])
async def test_a_docs_file_is_served_whole_whatever_range_is_asked(
    client: AsyncClient, sent: str
) -> None:
    """A bad Range was Starlette's plain-text 400 or 416, not a problem; RFC 9110 (14.2) lets a
    server ignore the header."""
    asset = "/static-offline-docs/swagger-ui.css"
    whole = await client.get(asset)

    response = await client.get(asset, headers={"Range": sent})

    assert response.status_code == 200
    assert response.content == whole.content
    # Not said to be taken either (RFC 9110, 14.3): it was `Accept-Ranges: bytes`.
    assert "accept-ranges" not in response.headers
    assert "accept-ranges" not in whole.headers


async def test_openapi_documents_models_and_errors(client: AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    create = schema["paths"]["/api/v1/devices"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeviceRead"
    }
    assert {"409", "422"} <= set(create["responses"])
    assert "application/problem+json" in create["responses"]["409"]["content"]


async def test_error_responses_are_documented_as_problem_json(client: AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    errors = [
        (path, method, status, response.get("content"))
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        # The health checks' 503 is their own JSON status.
        if status.startswith(("4", "5")) and "Readiness" not in str(response)
    ]
    assert len(errors) > 50
    assert [e for e in errors if e[3] != {"application/problem+json": problem}] == []


async def test_every_api_operation_documents_what_the_edge_and_the_database_may_answer(
    client: AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    operations = [
        (method, set(operation["responses"]))
        for path, by_method in schema["paths"].items()
        if path.startswith("/api/")
        for method, operation in by_method.items()
    ]
    writes = [statuses for method, statuses in operations if method not in ("get", "head")]
    assert len(writes) >= 10
    assert all({"400", "503"} <= statuses for _, statuses in operations)
    assert all({"408", "413", "415"} <= statuses for statuses in writes)


def _schema_keywords(node: Any) -> Iterator[str]:
    """Every key of every object in an OpenAPI document, but the names of properties."""
    if isinstance(node, list):
        for item in node:
            yield from _schema_keywords(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for each in value.values():
                    yield from _schema_keywords(each)
            else:
                yield key
                yield from _schema_keywords(value)


async def test_the_schema_speaks_json_schema_not_pydantic(client: AsyncClient) -> None:
    """Ids' bounds were written as pydantic's `ge`/`le`, which validators and client generators
    ignore, instead of `minimum`/`maximum`."""
    document = (await client.get("/openapi.json")).json()
    keywords = set(_schema_keywords(document))
    assert {"minimum", "maximum"} <= keywords
    assert keywords.isdisjoint({"ge", "le", "gt", "lt", "min_length", "max_length"})


async def test_the_api_says_it_takes_a_bearer_token(client: AsyncClient) -> None:
    """So that /docs has an Authorize button and generated clients send the token; the health
    checks need none."""
    document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    security = {
        (method, path): operation.get("security")
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    api = [key for key in security if key[1].startswith("/api/v1/") and "health" not in key[1]]
    assert len(api) > 20
    assert all(security[key] == [{"bearerToken": []}] for key in api)
    assert security[("get", "/livez")] is None


def _bounds(node: Any) -> Iterator[object]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
                yield value
            else:
                yield from _bounds(value)
    elif isinstance(node, list):
        for each in node:
            yield from _bounds(each)


async def test_integer_bounds_are_exact(client: AsyncClient) -> None:
    """FastAPI wrote the bounds of body fields as floats: an id's maximum became 2**63, which the
    API refuses (a client generated from the schema would send it)."""
    schema = (await client.get("/openapi.json")).json()
    owner_id = schema["components"]["schemas"]["DeviceCreate"]["properties"]["owner_id"]

    assert {"type": "integer", "minimum": 1, "maximum": 2**63 - 1} in owner_id["anyOf"]
    assert [bound for bound in _bounds(schema) if isinstance(bound, float)] == []


def _takes_span(sent: str) -> bool:
    try:
        TypeAdapter(Duration).validate_python(sent)
    except ValidationError:
        return False
    return True


async def test_a_duration_is_documented_as_it_is_read(client: AsyncClient) -> None:
    """It was `format: duration` (ISO 8601 only): a client generated from the schema refused
    `90d`, and an integer of seconds, both of which the API takes."""
    schema = (await client.get("/openapi.json")).json()
    expires_in = schema["components"]["schemas"]["TokenCreate"]["properties"]["expires_in"]
    string, number, _ = expires_in["anyOf"]

    assert "format" not in string
    for sent, taken in [
        *[(span, True) for span in ["90d", " 12H ", "3600", "1.5", " P1D ", "01:30:00"]],
        *[(span, True) for span in ["1 day, 01:30", "00:00:30.5", "p90d", "pt30m"]],
        *[(span, False) for span in ["1w", "1.5h", "-1h", "forever", "1:30", "\u0661d", "-5"]],
    ]:
        # The pattern left out `01:30:00`, which is taken: a client checking values against
        # the schema refused it.
        assert bool(re.fullmatch(string["pattern"], sent)) is taken, sent
        assert _takes_span(sent) is taken, sent
    # Within what the server takes: it refused 36,501 days, which the schema allowed.
    assert number == {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 36_500 * 86_400,
        "description": "seconds",
    }


async def test_the_headers_a_client_reads_are_documented(client: AsyncClient) -> None:
    """No response documented a header: generated clients could not read an ETag, a
    Location or a Retry-After."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    device = paths["/api/v1/devices/{device_id}"]

    def headers(operation: dict[str, Any], status: str) -> set[str]:
        return set(operation["responses"][status].get("headers", {}))

    assert headers(device["get"], "200") == {"ETag", "Last-Modified"}
    assert headers(device["get"], "304") == {"ETag"}
    assert headers(device["patch"], "200") == {"ETag", "Last-Modified"}
    assert headers(device["patch"], "412") == {"ETag"}
    created = paths["/api/v1/devices"]["post"]
    assert headers(created, "201") == {"ETag", "Last-Modified", "Location", "Idempotent-Replayed"}
    assert headers(paths["/api/v1/devices/bulk"]["post"], "201") == {"Idempotent-Replayed"}
    user = paths["/api/v1/users/{user_id}"]
    assert headers(user["get"], "200") == headers(user["patch"], "200") == {"Last-Modified"}
    assert headers(paths["/api/v1/users"]["post"], "201") == {
        "Last-Modified",
        "Location",
        "Idempotent-Replayed",
    }
    heartbeat = paths["/api/v1/devices/{device_id}/heartbeat"]["post"]
    assert headers(heartbeat, "204") == {"Idempotent-Replayed"}
    assert headers(paths["/api/v1/tokens"]["post"], "201") == {"Cache-Control", "Location"}
    assert headers(created, "503") == {"Retry-After"}
    assert headers(created, "401") == {"WWW-Authenticate"}
    # Sent but undocumented until a hunt compared the two:
    assert headers(created, "400") == headers(created, "403") == {"WWW-Authenticate"}
    for creating in ("/api/v1/devices", "/api/v1/devices/bulk", "/api/v1/users"):
        # 409: the same Idempotency-Key's first request still in progress
        assert headers(paths[creating]["post"], "409") == {"Retry-After"}
    assert headers(device["patch"], "415") == {"Accept-Patch", "Accept-Encoding"}
    export = paths["/api/v1/devices/export"]["get"]
    assert headers(export, "200") == {"Content-Disposition"}
    assert {"408", "413"} <= set(device["get"]["responses"])  # a GET may send a body too


async def test_an_idempotency_key_is_documented_as_it_is_read(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/api/v1/devices", "/api/v1/devices/bulk", "/api/v1/users"):
        (key,) = [p for p in paths[path]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
        assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}


async def test_a_sparse_item_is_documented_with_the_whole_items_fields(
    client: AsyncClient,
) -> None:
    """With `fields=`, an item holds some of its fields: documented as the item's properties,
    none of them required."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for page, item in [("DevicePage", "DeviceRead"), ("UserPage", "UserRead")]:
        whole, sparse = schemas[page]["properties"]["items"]["items"]["anyOf"]
        assert whole == {"$ref": f"#/components/schemas/{item}"}
        assert sparse["properties"] == schemas[item]["properties"]
        assert "required" in schemas[item]
        assert "required" not in sparse


async def test_each_listing_documents_its_sort_keys(client: AsyncClient) -> None:
    """`sort` was documented as any text, each listing's keys only in its 400."""
    paths = (await client.get("/openapi.json")).json()["paths"]

    def sorts(path: str) -> list[str]:
        parameters = paths[path]["get"]["parameters"]
        return next(p["schema"]["enum"] for p in parameters if p["name"] == "sort")

    assert sorts("/api/v1/devices") == [
        "id", "-id", "name", "-name", "created_at", "-created_at", "last_seen_at", "-last_seen_at"
    ]  # fmt: skip
    assert sorts("/api/v1/users") == ["id", "-id", "name", "-name", "created_at", "-created_at"]
    assert sorts("/api/v1/tokens") == sorts("/api/v1/changes") == ["id", "-id"]


async def test_a_repeatable_parameter_says_how_many_times_it_may_be_given(
    client: AsyncClient,
) -> None:
    """Only `name__ic` and `name__isw` said so (10): a client generated from the schema sent 101
    statuses, a 400."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    bounds = {
        (path, parameter["name"]): parameter["schema"].get("maxItems")
        for path, operations in paths.items()
        for parameter in operations.get("get", {}).get("parameters", [])
        if parameter["in"] == "query" and parameter["schema"].get("type") == "array"
    }

    assert bounds[("/api/v1/devices", "status")] == 100
    assert bounds[("/api/v1/devices", "name__ic")] == 10
    assert bounds[("/api/v1/changes", "object_id")] == 100
    assert None not in bounds.values(), bounds


async def test_each_operation_is_named_as_its_endpoint(client: AsyncClient) -> None:
    """Generated clients name their functions by operationId: FastAPI's default gave
    `list_devices_api_v1_devices_get`."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    names = [operation["operationId"] for path in paths.values() for operation in path.values()]

    assert "list_devices" in names
    assert "get_device" in names
    assert len(names) == len(set(names))
    assert all(name.isidentifier() for name in names)


async def test_trimmed_text_is_documented_as_more_than_spaces(client: AsyncClient) -> None:
    """Names, models, serial numbers and tags are trimmed, then need a character: `minLength: 1`
    alone let a client generated from the schema send spaces alone, for a 422."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    create = schemas["DeviceCreate"]["properties"]

    assert create["name"]["pattern"] == r"\S"
    assert create["tags"]["items"]["pattern"] == r"\S"
    assert (await client.post("/api/v1/devices", json={"name": "   "})).status_code == 422
