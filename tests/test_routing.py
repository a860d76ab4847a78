"""The API's routes are the app's own (app.include_flat) and behave as included routes would."""

import json
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from devreg.calls import ApiRoute
from devreg.devices.parameters import device_listing
from devreg.errors import InvalidParameter
from tests.api import DEVICES, USERS, assert_problem
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


def test_the_api_routes_are_matched_before_the_documentation(database_url: URL) -> None:
    # Each route a request passes over costs it about 10,000 instructions.
    routes = create_app(make_settings(database_url)).router.routes
    first_other = next(i for i, route in enumerate(routes) if not isinstance(route, ApiRoute))

    assert first_other > 0
    assert not any(isinstance(route, ApiRoute) for route in routes[first_other:])
    assert {"/openapi.json", "/docs", "/redoc"} <= {getattr(r, "path", "") for r in routes}


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

    for method in ("get", "put", "patch", "delete"):
        assert headers(device, method) == {"If-Match", "If-None-Match", "If-Unmodified-Since"}, (
            method
        )
        assert "412" in paths[device][method]["responses"], method
    for path in (DEVICES, DEVICES + "/bulk", device + "/heartbeat"):
        assert headers(path, "post") == {"Idempotency-Key"}


async def test_the_listings_query_parameters_are_documented(database_url: URL) -> None:
    """The listings read their query strings themselves (querystring.QueryString) and document
    each parameter as FastAPI would, with the schema it is validated by."""
    document = create_app(make_settings(database_url)).openapi()
    paths = document["paths"]

    def query(path: str) -> dict[str, dict[str, Any]]:
        parameters = paths[path]["get"]["parameters"]
        return {
            parameter["name"]: parameter for parameter in parameters if parameter["in"] == "query"
        }

    page = {"sort", "limit", "cursor", "count", "fields"}
    devices = query(DEVICES)
    assert set(devices) == page | {
        "status", "owner_id", "model", "name", "name__ic", "name__isw", "serial_number",
        "created_after", "created_before", "last_seen_after", "last_seen_before", "tag",
        "has_owner", "q",
    }  # fmt: skip
    assert query(USERS + "/{user_id}/devices") == devices
    assert set(query(DEVICES + "/export")) == set(devices) - page | {"format"}
    assert set(query(USERS)) == page | {
        "name", "name__ic", "name__isw", "email", "created_after", "created_before",
    }  # fmt: skip
    assert set(query("/api/v1/changes")) == page | {
        "object_type", "object_id", "user_id", "action", "since", "until",
    }  # fmt: skip
    assert devices["status"]["schema"]["items"]["enum"] == ["active", "inactive", "retired"]
    assert devices["count"]["schema"]["default"] == "none"
    assert (devices["limit"]["schema"]["minimum"], devices["limit"]["schema"]["maximum"]) == (
        1,
        1000,
    )
    assert devices["q"]["description"].startswith("Search name")
    assert "#/$defs/" not in json.dumps(document)  # every reference is resolvable


@pytest.mark.parametrize(
    ("query", "location"),
    [
        ("limit=0", ["query", "limit"]),
        ("limit=x", ["query", "limit"]),
        ("status=active&status=bogus", ["query", "status", 1]),
        ("owner_id=0", ["query", "owner_id", 0]),
        ("created_after=yesterday", ["query", "created_after"]),
        ("has_owner=perhaps", ["query", "has_owner"]),
        ("count=all", ["query", "count"]),
    ],
)
async def test_a_bad_query_value_is_located_as_fastapi_would(
    client: AsyncClient, query: str, location: list[Any]
) -> None:
    problem = assert_problem(await client.get(f"{DEVICES}?{query}"), 422)
    assert problem["errors"][0]["loc"] == location
    assert problem["detail"].startswith(".".join(map(str, location)) + ":")


async def test_a_bad_value_is_reported_before_an_unknown_name(client: AsyncClient) -> None:
    """As when FastAPI read the parameters: 422 for the value, not 400 for the name."""
    problem = assert_problem(await client.get(f"{DEVICES}?limit=0&bogus=1"), 422)
    assert problem["errors"][0]["loc"] == ["query", "limit"]
    assert_problem(await client.get(f"{DEVICES}?limit=1&bogus=1"), 400)


async def test_a_204_has_no_content_type(client: AsyncClient) -> None:
    """No content, so no media type (FastAPI's default response class named JSON's)."""
    user = (await client.post(USERS, json={"name": "ann"})).json()
    first, second, third = [
        (await client.post(DEVICES, json={"name": f"d{n}"})).json()["id"] for n in range(3)
    ]
    answers = [
        await client.post(f"{DEVICES}/{first}/heartbeat"),
        await client.delete(f"{DEVICES}/{first}"),
        await client.request("DELETE", f"{DEVICES}/bulk", json=[second, third]),
        await client.delete(f"{USERS}/{user['id']}"),
    ]

    assert [(answer.status_code, answer.content) for answer in answers] == [(204, b"")] * 4
    assert [answer.headers.get("content-type") for answer in answers] == [None] * 4


@pytest.mark.parametrize(
    "written", ["6_7", "+67", "67.0", "%2067", "%C2%A067", "%D9%A6%D9%A7"], ids=repr
)
async def test_an_id_in_a_path_is_its_digits_alone(client: AsyncClient, written: str) -> None:
    """`6_7`, `+67`, `67.0`, a space or other scripts' digits (Arabic-Indic `٦٧`) before it
    were all read as 67: a typo read another device."""
    device = (await client.post(DEVICES, json={"name": "d"})).json()
    user = (await client.post(USERS, json={"name": "u"})).json()
    plain = {"device": device["id"], "user": user["id"]}
    for kind, base in (("device", DEVICES), ("user", USERS)):
        assert (await client.get(f"{base}/{plain[kind]}")).status_code == 200
        typed = written.replace("67", str(plain[kind])) if "67" in written else written
        response = await client.get(f"{base}/{typed}")
        assert assert_problem(response, 422)["errors"][0]["loc"][0] == "path"
        assert (await client.delete(f"{base}/{typed}")).status_code == 422


@pytest.mark.parametrize("written", ["{id}.0", "{id}e0", "{id}.0e0"])
async def test_an_id_in_a_body_is_a_whole_number(client: AsyncClient, written: str) -> None:
    """A JSON number with a fraction or an exponent was read through a float: `1.0` was taken
    (README: refused), and above 2**53 it was another id (`9007199254740993.0` gave the device
    to user 9007199254740992)."""
    user = (await client.post(USERS, json={"name": "u"})).json()
    device = (await client.post(DEVICES, json={"name": "d"})).json()

    def number(value: int) -> str:
        return written.format(id=value)

    sent = [
        ("POST", DEVICES, f'{{"name": "d", "owner_id": {number(user["id"])}}}'),
        ("PATCH", f"{DEVICES}/{device['id']}", f'{{"owner_id": {number(user["id"])}}}'),
        ("PATCH", f"{DEVICES}/bulk", f'[{{"id": {number(device["id"])}, "model": "m"}}]'),
        ("DELETE", f"{DEVICES}/bulk", f"[{number(device['id'])}]"),
        ("POST", "/api/v1/tokens", f'{{"user_id": {number(user["id"])}}}'),
    ]
    for method, url, body in sent:
        response = await client.request(
            method, url, content=body, headers={"Content-Type": "application/json"}
        )
        assert "whole number" in assert_problem(response, 422)["errors"][0]["msg"], url

    assert (await client.get(f"{DEVICES}/{device['id']}")).json() == device
    assert (await client.get(DEVICES)).json()["items"] == [device]


@pytest.mark.parametrize("limit", ["1_0", "10.0", "+10", " 10"])
async def test_a_page_size_is_its_digits_alone(client: AsyncClient, limit: str) -> None:
    response = await client.get(DEVICES, params={"limit": limit})

    assert assert_problem(response, 422)["errors"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize(
    "path", [f"{DEVICES}/", f"{USERS}/", f"{DEVICES}/1/", "/livez/", "/readyz/"]
)
async def test_a_path_with_a_slash_too_many_is_not_found_not_redirected(
    client: AsyncClient, path: str
) -> None:
    """It was a 307 to the path without it, before authentication, with no problem body, and
    with the request's Host header written into its Location."""
    response = await client.get(path, headers={"Host": "elsewhere.example"})

    assert_problem(response, 404)
    assert "location" not in response.headers
