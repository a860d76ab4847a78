"""The device hot paths as production runs them: a request's session has no transaction, so
each lone statement goes straight to a pooled connection, in autocommit. (Elsewhere the tests
wrap every request in a rolled-back transaction, which takes the session's path instead.)"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.engine import URL

from devreg.app import create_app
from tests.api import USERS, assert_problem, create_user
from tests.support import admin, api_client, devreg_backends, make_settings, query, running

DEVICES = "/api/v1/devices"


@pytest.fixture
async def client(committed_database_url: URL) -> AsyncIterator[AsyncClient]:
    settings = make_settings(committed_database_url, pool_size=1, max_overflow=0)
    async with running(create_app(settings)) as app, api_client(app) as client:
        yield client


async def stored_device(url: URL, device_id: int) -> dict[str, object]:
    """The device's row as another connection sees it: only what was committed."""
    sql = "SELECT model, version, last_seen_at FROM devices WHERE id = :id"
    (row,) = await query(url, sql, id=device_id)
    return row


async def test_each_write_is_committed_as_soon_as_it_answers(
    client: AsyncClient, committed_database_url: URL
) -> None:
    owner = await create_user(client, name="Ada")
    created = await client.post(DEVICES, json={"name": "probe", "owner_id": owner["id"]})
    assert created.status_code == 201
    device = created.json()
    assert device["owner"] == {"id": owner["id"], "name": "Ada"}
    assert created.headers["location"].endswith(f"{DEVICES}/{device['id']}")

    changed = await client.patch(f"{DEVICES}/{device['id']}", json={"model": "m1"})
    assert changed.status_code == 200
    assert (changed.json()["model"], changed.json()["version"]) == ("m1", 2)
    assert (await stored_device(committed_database_url, device["id"]))["model"] == "m1"

    beat = await client.post(f"{DEVICES}/{device['id']}/heartbeat")
    assert beat.status_code == 204
    assert (await stored_device(committed_database_url, device["id"]))["last_seen_at"] is not None

    read = await client.get(f"{DEVICES}/{device['id']}")
    assert read.json() == {
        **changed.json(),
        "last_seen_at": read.json()["last_seen_at"],
        "updated_at": read.json()["updated_at"],
        "version": 3,
    }


async def test_constraint_violations_are_the_same_problems(client: AsyncClient) -> None:
    assert (await client.post(DEVICES, json={"name": "a", "serial_number": "SN-1"})).is_success
    duplicate = await client.post(DEVICES, json={"name": "b", "serial_number": "SN-1"})
    assert_problem(duplicate, 409, "serial_number is already registered")
    no_owner = await client.post(DEVICES, json={"name": "c", "owner_id": 999_999})
    assert_problem(no_owner, 422)
    assert no_owner.json()["field"] == "owner_id"
    # The failed statements left the pool's one connection usable.
    assert (await client.get(f"{DEVICES}/999999")).status_code == 404


async def test_a_lost_connection_is_a_503_and_the_next_request_gets_a_new_one(
    client: AsyncClient, committed_database_url: URL
) -> None:
    device = (await client.post(DEVICES, json={"name": "probe"})).json()
    await admin(
        committed_database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'devreg'",
    )
    lost = await client.get(f"{DEVICES}/{device['id']}")
    assert_problem(lost, 503)
    assert "SQL" not in lost.text
    assert "terminat" not in lost.text
    again = await client.get(f"{DEVICES}/{device['id']}")
    assert again.status_code == 200
    assert again.json()["id"] == device["id"]


async def test_the_pool_is_open_before_the_first_request(committed_database_url: URL) -> None:
    settings = make_settings(committed_database_url, pool_size=3, max_overflow=2)
    async with running(create_app(settings)):
        assert len(await devreg_backends(committed_database_url)) == 5


async def test_pages_read_committed_rows_with_their_owners(client: AsyncClient) -> None:
    owner = await create_user(client, name="Ada")
    for name in ("a", "b", "c"):
        await client.post(DEVICES, json={"name": name, "owner_id": owner["id"]})

    first = (await client.get(DEVICES, params={"limit": 2, "sort": "-name"})).json()
    rest = (
        await client.get(DEVICES, params={"sort": "-name", "cursor": first["next_cursor"]})
    ).json()

    assert [device["name"] for device in first["items"] + rest["items"]] == ["c", "b", "a"]
    assert {device["owner"]["name"] for device in first["items"] + rest["items"]} == {"Ada"}
    assert rest["next_cursor"] is None


async def every_item(client: AsyncClient, url: str, **params: object) -> list[dict[str, Any]]:
    """Every item of a listing, read a page of one at a time."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.get(url, params={**params, "limit": 1, "cursor": cursor or []})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("name", ["probe-a", "probe-b", "probe-c", "probe-d"]),
        ("-id", ["probe-d", "probe-c", "probe-b", "probe-a"]),
        ("-created_at", ["probe-d", "probe-c", "probe-b", "probe-a"]),
        # Never seen (NULL) last, in either direction.
        ("last_seen_at", ["probe-c", "probe-a", "probe-b", "probe-d"]),
        ("-last_seen_at", ["probe-a", "probe-c", "probe-d", "probe-b"]),
        (None, ["probe-a", "probe-b", "probe-c", "probe-d"]),
    ],
)
async def test_a_listing_read_a_row_at_a_time_is_the_whole_listing(
    client: AsyncClient, sort: str | None, expected: list[str]
) -> None:
    created = [(await client.post(DEVICES, json={"name": f"probe-{x}"})).json() for x in "abcd"]
    for device in (created[2], created[0]):
        assert (await client.post(f"{DEVICES}/{device['id']}/heartbeat")).status_code == 204
    sorted_by = {"sort": sort} if sort else {}

    assert names(await every_item(client, DEVICES, **sorted_by)) == expected
    found = await every_item(client, DEVICES, q="probe", **sorted_by)
    assert sorted(names(found)) == sorted(expected)


async def test_each_request_is_answered_with_its_own_values(client: AsyncClient) -> None:
    """A listing's statement is compiled once for each structure (which filters, how many
    values): every request of that structure still reads with its own values."""
    for status in ("active", "inactive", "retired"):
        for tag, rack in (("x", 1), ("y", 2)):
            device = {"name": f"{status}-{tag}", "status": status, "tags": [tag]}
            created = await client.post(DEVICES, json={**device, "attributes": {"rack": rack}})
            assert created.status_code == 201
    await client.post(DEVICES, json={"name": "50%_off"})
    await client.post(DEVICES, json={"name": "500"})

    async def listed(**params: object) -> list[str]:
        response = await client.get(DEVICES, params={**params, "sort": "name"})
        assert response.status_code == 200, response.text
        return names(response.json()["items"])

    assert await listed(status="inactive") == ["inactive-x", "inactive-y"]
    assert await listed(status="retired") == ["retired-x", "retired-y"]
    assert await listed(status=["active", "retired"], tag="x") == ["active-x", "retired-x"]
    assert len(await listed(status=["active", "inactive", "retired"])) == 8
    assert await listed(status=["inactive", "retired"], tag="y") == ["inactive-y", "retired-y"]
    assert await listed(status=["active", "inactive"], tag="x") == ["active-x", "inactive-x"]
    assert await listed(**{"attr.rack": 2, "status": "active"}) == ["active-y"]
    assert await listed(**{"attr.rack": 1, "status": "retired"}) == ["retired-x"]
    assert await listed(name__ic="0%_") == ["50%_off"]
    assert await listed(name__ic="00") == ["500"]


async def test_users_and_changes_are_listed_the_same_way(client: AsyncClient) -> None:
    for name in ("Cy", "Ada", "Bo"):
        await create_user(client, name=name, email=f"{name.lower()}@example.com")

    assert names(await every_item(client, USERS, sort="-name")) == ["Cy", "Bo", "Ada"]
    assert names(await every_item(client, USERS, name=["Ada", "Cy"])) == ["Cy", "Ada"]
    changes = await every_item(client, "/api/v1/changes")
    assert [change["action"] for change in changes] == ["create"] * 3


async def test_a_listing_on_a_lost_connection_is_a_503_and_the_next_one_is_answered(
    client: AsyncClient, committed_database_url: URL
) -> None:
    await client.post(DEVICES, json={"name": "probe"})
    await admin(
        committed_database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'devreg'",
    )

    assert_problem(await client.get(DEVICES), 503)
    assert names((await client.get(DEVICES)).json()["items"]) == ["probe"]
