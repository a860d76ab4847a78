"""The API's routes are the app's own (app.include_flat) and behave as included routes would."""

from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.devices.routes import device_listing
from devreg.errors import InvalidParameter
from tests.api import DEVICES, assert_problem
from tests.support import api_client, make_settings, running


async def test_dependency_overrides_reach_the_api_routes(database_url: URL) -> None:
    app = create_app(make_settings(database_url, auth="off"))

    async def refuse() -> None:
        raise InvalidParameter("sort", "overridden")

    app.dependency_overrides[device_listing] = refuse
    async with running(app) as started, api_client(started) as client:
        refused = await client.get(DEVICES)
        app.dependency_overrides.clear()
        served = await client.get(DEVICES)

    assert_problem(refused, 400)
    assert served.status_code == 200


async def test_a_route_keeps_what_its_router_declares(database_url: URL) -> None:
    app = create_app(make_settings(database_url))
    operation = app.openapi()["paths"][DEVICES + "/{device_id}"]["get"]

    assert operation["tags"] == ["devices"]
    assert {"401", "403", "404"} <= set(operation["responses"])


async def test_the_headers_a_route_reads_are_documented(database_url: URL) -> None:
    paths = create_app(make_settings(database_url)).openapi()["paths"]
    device = DEVICES + "/{device_id}"

    def headers(path: str, method: str) -> set[str]:
        parameters = paths[path][method].get("parameters", [])
        return {parameter["name"] for parameter in parameters if parameter["in"] == "header"}

    assert headers(device, "get") == {"If-None-Match"}
    assert headers(device, "put") == headers(device, "patch") == {"If-Match"}
    assert headers(device, "delete") == {"If-Match"}
    for path in (DEVICES, DEVICES + "/bulk", device + "/heartbeat"):
        assert headers(path, "post") == {"Idempotency-Key"}
