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
