"""The interactive docs work offline: their assets come from a Python package, not a CDN."""

import re

import pytest
from httpx import AsyncClient


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
    assert all("503" in statuses for _, statuses in operations)
    assert all({"408", "413", "415"} <= statuses for statuses in writes)
