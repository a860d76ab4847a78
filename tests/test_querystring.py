"""What every listing does with its query string: a parameter means one thing."""

import json
from typing import Annotated

import pytest
from fastapi import Depends

from devreg.calls import ApiRoute, Call
from devreg.querystring import PATTERNS_MAX
from devreg.schemas import REPEATS_MAX
from tests.api import DEVICES, USERS, assert_problem, create_device, create_user, stored_devices
from tests.support import api_client

CHANGES = "/api/v1/changes"
LISTINGS = [DEVICES, USERS, CHANGES, f"{DEVICES}/export"]


class TestRepeatedParameters:
    @pytest.mark.parametrize(
        ("path", "query", "parameter"),
        [
            (DEVICES, "limit=1&limit=3", "limit"),
            (DEVICES, "has_owner=true&has_owner=false", "has_owner"),
            (DEVICES, "sort=-id&sort=id", "sort"),
            (DEVICES, "q=nano&q=pi", "q"),
            (DEVICES, "created_before=2000-01-01T00:00:00Z&created_before=2100-01-01T00:00:00Z",
             "created_before"),
            (f"{DEVICES}/export", "format=csv&format=ndjson", "format"),
            (USERS, "count=exact&count=none", "count"),
            (CHANGES, "fields=id&fields=action", "fields"),
        ],
    )  # fmt: skip
    async def test_a_parameter_that_takes_one_value_given_twice_is_refused(
        self, client, path, query, parameter
    ):
        response = await client.get(f"{path}?{query}")

        problem = assert_problem(response, 400)
        assert problem["parameter"] == parameter
        assert "only once" in problem["detail"]

    @pytest.mark.parametrize("query", ["status=active&status=inactive", "attr.room=A&attr.room=B"])
    async def test_a_filter_that_takes_many_values_takes_them(self, client, query):
        response = await client.get(f"{DEVICES}?{query}")

        assert response.status_code == 200

    @pytest.mark.parametrize("path", LISTINGS)
    async def test_a_filter_repeated_beyond_the_limit_is_refused(self, client, path):
        parameter = "status" if path.startswith(DEVICES) else "name" if path == USERS else "action"
        value = {"status": "active", "name": "ann", "action": "create"}[parameter]
        query = "&".join([f"{parameter}={value}"] * (REPEATS_MAX + 1))

        problem = assert_problem(await client.get(f"{path}?{query}"), 400)
        assert problem["parameter"] == parameter
        within = "&".join([f"{parameter}={value}"] * REPEATS_MAX)
        assert (await client.get(f"{path}?{within}")).status_code == 200

    async def test_an_unknown_parameter_given_twice_is_refused_as_unknown(self, client):
        problem = assert_problem(await client.get(f"{DEVICES}?bogus=1&bogus=2"), 400)

        assert problem["parameter"] == "bogus"
        assert "unknown" in problem["detail"]

    async def test_the_repeat_is_reported_before_a_bad_value(self, client):
        """How many times a parameter is given is judged before any value is read."""
        problem = assert_problem(await client.get(f"{DEVICES}?limit=0&limit=0"), 400)

        assert problem["parameter"] == "limit"

    async def test_attribute_filters_count_together(self, client):
        many = [(f"attr.k{index}", "1") for index in range(REPEATS_MAX + 1)]

        problem = assert_problem(await client.get(DEVICES, params=many), 400)
        # Judged before any value, as other counts are: a bad limit's 422 came first.
        also_bad = assert_problem(await client.get(DEVICES, params=[*many, ("limit", "x")]), 400)

        assert problem["parameter"].startswith("attr.")
        assert also_bad["parameter"].startswith("attr.")
        assert (await client.get(DEVICES, params=many[:-1])).status_code == 200

    @pytest.mark.parametrize("path", [DEVICES, USERS])
    @pytest.mark.parametrize("parameter", ["name__ic", "name__isw"])
    async def test_name_patterns_are_few(self, client, path, parameter):
        """Refused as a hundred and one statuses are (400): they were the model's 422."""
        too_many = [(parameter, f"x{index}") for index in range(PATTERNS_MAX + 1)]

        response = await client.get(path, params=too_many)

        problem = assert_problem(response, 400)
        assert problem["parameter"] == parameter
        assert f"at most {PATTERNS_MAX} times" in problem["detail"]
        assert (await client.get(path, params=too_many[:-1])).status_code == 200


class TestEmailFilter:
    @pytest.mark.parametrize(
        ("email", "asked"),
        [
            ("ΟΔΟΣ@example.org", "ΟΔΟΣ@example.org"),  # Python lowers the final Σ to ς
            ("ΟΔΟΣ@example.org", "οδοσ@example.org"),
            ("İnci@example.org", "İnci@example.org"),  # Python lowers İ to i + U+0307
            ("x" * 150 + "@example.org", "X" * 150 + "@example.org"),  # beyond 100 characters
        ],
    )
    async def test_a_user_is_found_by_the_email_stored(self, client, email, asked):
        user = await create_user(client, name="odos", email=email)
        await create_user(client, name="other", email="i\u0307nci@example.org")

        response = await client.get(USERS, params={"email": asked})

        assert response.status_code == 200, response.text
        assert [item["id"] for item in response.json()["items"]] == [user["id"]]


class TestRoutesWithoutParameters:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/api/v1/devices/{device}", None),
            ("PATCH", "/api/v1/devices/{device}", {"name": "renamed"}),
            ("PUT", "/api/v1/devices/{device}", {"name": "renamed"}),
            ("DELETE", "/api/v1/devices/{device}", None),
            ("POST", "/api/v1/devices/{device}/heartbeat", None),
            ("POST", "/api/v1/devices", {"name": "new"}),
            ("POST", "/api/v1/devices/bulk", [{"name": "new"}]),
            ("DELETE", "/api/v1/devices/bulk", ["{device}"]),
            ("GET", "/api/v1/users/{user}", None),
            ("PATCH", "/api/v1/users/{user}", {"name": "renamed"}),
        ],
    )
    async def test_any_parameter_is_refused_and_nothing_is_done(self, client, method, path, body):
        """`GET /devices/1?fields=id` answered every field, and a write with a misspelt
        parameter applied: a listing refused both."""
        user = await create_user(client, name="ann")
        device = await create_device(client, name="pi", owner_id=user["id"])
        ids = {"device": device["id"], "user": user["id"]}
        url = path.format(**ids)
        sent = json.loads(json.dumps(body).replace('"{device}"', str(device["id"])))

        response = await client.request(method, f"{url}?fields=id", json=sent)

        problem = assert_problem(response, 400, "unknown query parameter 'fields'")
        assert problem["parameter"] == "fields"
        assert await stored_devices(client) == [device]
        assert (await client.get(f"{USERS}/{user['id']}")).json() == user

    async def test_the_tutorial_routes_ignore_them_as_the_tutorials_did(self, client):
        device = await create_device(client, name="pi")

        response = await client.get(f"/api/v1/device/{device['id']}?fields=id")

        assert response.json() == {"id": device["id"], "name": "pi"}

    async def test_a_parameter_a_dependency_declares_is_taken(self, running_app):
        """A route's own parameters were looked for, not its dependencies': one a dependency
        declared would have been refused as unknown."""

        def page_size(size: int = 10) -> int:
            return size

        async def sized(call: Call, size: Annotated[int, Depends(page_size)]) -> dict[str, int]:
            return {"size": size}

        app = running_app.app
        app.router.add_api_route("/api/v1/sized", sized, route_class_override=ApiRoute)
        try:
            async with api_client(running_app) as client:
                taken = await client.get("/api/v1/sized?size=3")
        finally:
            app.router.routes.pop()

        assert taken.json() == {"size": 3}
