"""devreg served under a path prefix (a root path): what it writes for the client names the
prefix once, whether the server puts it at the start of the path as well (uvicorn, as the ASGI
spec says) or in root_path alone."""

from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from tests.api import DEVICES, USERS
from tests.auth.test_tokens import TOKENS
from tests.support import RunningApp, api_client, served_under

PREFIX = "/devreg"


@pytest.fixture(params=["in the path too", "in root_path alone"])
async def prefixed(
    request: pytest.FixtureRequest, app_in_test_transaction: RunningApp
) -> AsyncIterator[AsyncClient]:
    """A client of the app served under PREFIX, sending paths without it (as a proxy that
    strips the prefix passes them on)."""
    if request.param == "in the path too":
        client = api_client(served_under(PREFIX, app_in_test_transaction))
    else:
        client = api_client(app_in_test_transaction, root_path=PREFIX)
    async with client:
        yield client


async def test_a_created_resource_is_located_under_the_prefix_once(prefixed: AsyncClient) -> None:
    """uvicorn put the prefix at the start of the path, and devreg added it again:
    `/devreg/devreg/api/v1/devices/1`."""
    user = await prefixed.post(USERS, json={"name": "ann"})
    retry = {"Idempotency-Key": "k1"}
    device = await prefixed.post(DEVICES, json={"name": "pi"}, headers=retry)
    replayed = await prefixed.post(DEVICES, json={"name": "pi"}, headers=retry)
    token = await prefixed.post(TOKENS, json={"user_id": user.json()["id"]})

    assert user.headers["location"] == f"{PREFIX}{USERS}/{user.json()['id']}"
    assert device.headers["location"] == f"{PREFIX}{DEVICES}/{device.json()['id']}"
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.headers["location"] == device.headers["location"]
    assert token.headers["location"] == f"{PREFIX}{TOKENS}/{token.json()['id']}"


async def test_a_problem_names_its_instance_under_the_prefix_once(prefixed: AsyncClient) -> None:
    response = await prefixed.get(f"{DEVICES}/999999")

    assert response.status_code == 404
    assert response.json()["instance"] == f"{PREFIX}{DEVICES}/999999"


async def test_a_tutorial_path_a_slash_too_few_is_redirected_under_the_prefix_once(
    prefixed: AsyncClient,
) -> None:
    """A server that leaves the root path out of raw_path had the redirect leave the prefix
    out too: /users went to /users/, outside it."""
    response = await prefixed.get("/users", params={"limit": 5})

    assert response.status_code == 307
    assert response.headers["location"] == f"{PREFIX}/users/?limit=5"
