"""The API's routes are the app's own (app.include_flat) and behave as included routes would."""

from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.auth.guard import authenticate
from devreg.errors import Unauthenticated
from tests.api import DEVICES, assert_problem
from tests.support import api_client, make_settings, running


async def test_dependency_overrides_reach_the_api_routes(database_url: URL) -> None:
    app = create_app(make_settings(database_url, auth="off"))

    async def nobody() -> None:
        raise Unauthenticated

    app.dependency_overrides[authenticate] = nobody
    async with running(app) as started, api_client(started) as client:
        refused = await client.get(DEVICES)
        app.dependency_overrides.clear()
        served = await client.get(DEVICES)

    assert_problem(refused, 401)
    assert served.status_code == 200


async def test_a_route_keeps_what_its_router_declares(database_url: URL) -> None:
    app = create_app(make_settings(database_url))
    operation = app.openapi()["paths"][DEVICES + "/{device_id}"]["get"]

    assert operation["tags"] == ["devices"]
    assert {"401", "403", "404"} <= set(operation["responses"])
