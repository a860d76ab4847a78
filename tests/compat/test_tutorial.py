"""The tutorials' requests, verbatim, get the responses the tutorials document."""

from typing import Any

import pytest
from httpx import AsyncClient, Response

from tests.api import assert_problem

DEVICE = "/api/v1/device/"
USERS = "/users/"
MISSING_ID = 987_654_321


def assert_item(response: Response, *, status: int = 200, **expected: Any) -> dict[str, Any]:
    """The tutorials' one response shape: exactly `id` and `name`."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"id", "name"}
    assert isinstance(body["id"], int)
    assert body.items() >= expected.items()
    return body


async def create_device(client: AsyncClient, name: str = "my-first-device") -> dict[str, Any]:
    return assert_item(await client.post(DEVICE, json={"name": name}), name=name)


async def create_user(client: AsyncClient, name: str = "Ann") -> dict[str, Any]:
    return assert_item(await client.post(USERS, params={"name": name}), name=name)


class TestTutorialDeviceCreate:
    async def test_name_only_body_returns_id_and_name(self, client: AsyncClient) -> None:
        response = await client.post(DEVICE, json={"name": "my-first-device"})

        assert_item(response, name="my-first-device")

    @pytest.mark.parametrize("sent_id", [None, MISSING_ID], ids=["null", "number"])
    async def test_whole_model_with_id_ignores_id(
        self, client: AsyncClient, sent_id: int | None
    ) -> None:
        response = await client.post(DEVICE, json={"id": sent_id, "name": "my-first-device"})

        body = assert_item(response, name="my-first-device")
        assert body["id"] != MISSING_ID


class TestTutorialDeviceList:
    async def test_created_devices_listed_as_id_and_name(self, client: AsyncClient) -> None:
        created = [await create_device(client, name) for name in ("pi-1", "pi-2")]

        response = await client.get(DEVICE)

        assert response.status_code == 200
        listed = response.json()
        assert all(set(item) == {"id", "name"} for item in listed)
        assert all(device in listed for device in created)


class TestTutorialDeviceRead:
    async def test_existing_device_returns_id_and_name(self, client: AsyncClient) -> None:
        device = await create_device(client)

        response = await client.get(f"{DEVICE}{device['id']}")

        assert assert_item(response) == device


class TestTutorialDeviceUpdate:
    @pytest.mark.parametrize(
        "extra", [{}, {"id": MISSING_ID}], ids=["name-only", "whole-model-with-id"]
    )
    async def test_new_name_returns_updated_device(
        self, client: AsyncClient, extra: dict[str, Any]
    ) -> None:
        device = await create_device(client)

        response = await client.put(f"{DEVICE}{device['id']}", json={"name": "renamed", **extra})

        assert assert_item(response) == {"id": device["id"], "name": "renamed"}
        assert assert_item(await client.get(f"{DEVICE}{device['id']}"))["name"] == "renamed"


class TestTutorialDeviceDelete:
    async def test_existing_device_returns_ok_then_is_gone(self, client: AsyncClient) -> None:
        device = await create_device(client)

        response = await client.delete(f"{DEVICE}{device['id']}")

        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert_problem(await client.get(f"{DEVICE}{device['id']}"), 404, "Device not found")


class TestTutorialMissing:
    @pytest.mark.parametrize(
        ("method", "path", "body", "detail"),
        [
            ("GET", f"{DEVICE}{MISSING_ID}", None, "Device not found"),
            ("PUT", f"{DEVICE}{MISSING_ID}", {"name": "renamed"}, "Device not found"),
            ("DELETE", f"{DEVICE}{MISSING_ID}", None, "Device not found"),
            ("GET", f"{USERS}{MISSING_ID}", None, "User not found"),
        ],
    )
    async def test_unknown_id_returns_404_problem(
        self,
        client: AsyncClient,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        detail: str,
    ) -> None:
        response = await client.request(method, path, json=body)

        assert_problem(response, 404, detail)


class TestTutorialUsers:
    async def test_create_with_query_name_returns_id_and_name(self, client: AsyncClient) -> None:
        response = await client.post("/users/?name=Ann")

        assert_item(response, name="Ann")

    async def test_created_users_listed_as_id_and_name(self, client: AsyncClient) -> None:
        created = [await create_user(client, name) for name in ("Ann", "Bob")]

        response = await client.get(USERS)

        assert response.status_code == 200
        listed = response.json()
        assert all(set(item) == {"id", "name"} for item in listed)
        assert all(user in listed for user in created)

    async def test_existing_user_returns_id_and_name(self, client: AsyncClient) -> None:
        user = await create_user(client)

        response = await client.get(f"{USERS}{user['id']}")

        assert assert_item(response) == user


class TestTutorialVisibleCanonically:
    @pytest.mark.parametrize(
        ("create", "canonical"),
        [(create_device, "/api/v1/devices"), (create_user, "/api/v1/users")],
        ids=["device", "user"],
    )
    async def test_created_object_readable_through_canonical_route(
        self, client: AsyncClient, create: Any, canonical: str
    ) -> None:
        created = await create(client)

        response = await client.get(f"{canonical}/{created['id']}")

        assert response.status_code == 200
        assert response.json().items() >= created.items()


class TestTutorialOpenApi:
    @pytest.fixture
    async def paths(self, client: AsyncClient) -> list[str]:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        return list(response.json()["paths"])

    async def test_compat_routes_hidden(self, paths: list[str]) -> None:
        assert not [path for path in paths if DEVICE in path or path.startswith(USERS)]

    @pytest.mark.parametrize(
        "canonical",
        [
            "/api/v1/devices",
            "/api/v1/devices/{device_id}",
            "/api/v1/users",
            "/api/v1/users/{user_id}",
        ],
    )
    async def test_canonical_routes_documented(self, paths: list[str], canonical: str) -> None:
        assert canonical in paths


@pytest.mark.parametrize(
    ("method", "sent", "location"),
    [
        ("POST", "/api/v1/device", "/api/v1/device/"),
        ("GET", "/api/v1/device?limit=5", "/api/v1/device/?limit=5"),
        ("GET", "/api/v1/device/1/", "/api/v1/device/1"),
        ("POST", "/users?name=Bob", "/users/?name=Bob"),
        ("GET", "/users/1/", "/users/1"),
        # The tutorial's health check, whose app redirected it as it did the others: a 404.
        ("GET", "/api/v1/health-check/db/", "/api/v1/health-check/db"),
    ],
)
async def test_a_tutorial_path_with_a_slash_too_few_or_many_is_redirected(
    client: AsyncClient, method: str, sent: str, location: str
) -> None:
    """As the tutorials' apps (FastAPI's defaults) did, with the path alone as Location: 404s
    once redirects were turned off for devreg's own paths."""
    response = await client.request(method, sent, headers={"Host": "elsewhere.example"})

    assert response.status_code == 307
    assert response.headers["location"] == location


async def test_a_redirected_tutorial_request_is_served_where_it_is_sent(
    client: AsyncClient,
) -> None:
    created = await client.post("/api/v1/device", json={"name": "pi"}, follow_redirects=True)

    assert created.status_code == 200, created.text
    assert created.json()["name"] == "pi"


@pytest.mark.parametrize(
    ("path", "params", "body", "other_params"),
    [
        ("/api/v1/device/", None, {"name": "pi"}, None),
        ("/users/", {"name": "Bob"}, None, {"name": "Ann"}),
    ],
)
async def test_a_tutorial_create_is_made_once_for_an_idempotency_key(
    client: AsyncClient,
    path: str,
    params: dict[str, str] | None,
    body: dict[str, str] | None,
    other_params: dict[str, str] | None,
) -> None:
    """The key was ignored there: a client's retry created twice."""
    key = {"Idempotency-Key": "k1"}
    first = await client.post(path, params=params, json=body, headers=key)
    second = await client.post(path, params=params, json=body, headers=key)

    assert first.status_code == second.status_code == 200, second.text
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len((await client.get(path)).json()) == 1
    if other_params is not None:  # another name in the query string is another request
        assert_problem(await client.post(path, params=other_params, headers=key), 422)


async def test_a_redirect_keeps_the_path_as_sent(client: AsyncClient) -> None:
    """Built from the decoded path, `/api/v1/device/1%3F/` went to `/api/v1/device/1?`, which
    is device 1, where the path without its slash is a 422."""
    response = await client.get("/api/v1/device/1%3F/")

    assert response.status_code == 307
    assert response.headers["location"] == "/api/v1/device/1%3F"


async def test_a_slash_sent_escaped_is_not_redirected_to_a_path_not_found(
    client: AsyncClient,
) -> None:
    """`/api/v1/device/1%2F` decoded is `/api/v1/device/1/`, a slash too many; but the path as
    sent has none to take away, and the redirect added one: to `/api/v1/device/1%2F/`, a 404."""
    response = await client.get("/api/v1/device/1%2F")

    assert_problem(response, 404)


async def test_the_tutorial_user_is_judged_by_if_unmodified_since(client: AsyncClient) -> None:
    """As the API's own user is: the tutorial's GET ignored it."""
    user = (await client.post("/users/", params={"name": "Bob"})).json()

    response = await client.get(
        f"/users/{user['id']}", headers={"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}
    )

    assert_problem(response, 412)
