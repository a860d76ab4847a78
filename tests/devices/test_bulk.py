"""HTTP tests of bulk writes (/devices/bulk) and the heartbeat: all or nothing, one statement."""

import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import pytest
from httpx import AsyncClient, Response
from sqlalchemy.engine import URL

from tests.api import (
    BAD_IDS,
    DEVICES,
    USERS,
    assert_problem,
    bulk_create,
    create_device,
    create_user,
    fetch_device,
    stored_devices,
)
from tests.auth.test_tokens import TOKENS, bearer, new_token
from tests.support import asyncpg_connection, devreg_server, waiting_for_a_lock

BULK = f"{DEVICES}/bulk"
BULK_MAX = 10_000


# --- helpers -------------------------------------------------------------------------------


async def bulk_update(client: AsyncClient, items: list[dict[str, Any]]) -> Response:
    return await client.patch(BULK, json=items)


async def bulk_delete(client: AsyncClient, ids: list[Any]) -> Response:
    return await client.request("DELETE", BULK, json=ids)


async def device_count(client: AsyncClient) -> int:
    response = await client.get(DEVICES, params={"count": "exact", "limit": 1})
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def bad_items(problem: dict[str, Any]) -> list[tuple[int, str | None]]:
    """(index, field, or None for the item itself) of each error of a bulk 422, in order."""
    locations = [error["loc"] for error in problem["errors"]]
    assert all(loc[0] == "body" and isinstance(loc[1], int) for loc in locations), locations
    assert all(len(loc) <= 3 for loc in locations), locations
    return [(loc[1], loc[2] if len(loc) == 3 else None) for loc in locations]


def heartbeat_url(device_id: object) -> str:
    return f"{DEVICES}/{device_id}/heartbeat"


def starting_with(statements: list[str], verb: str) -> list[str]:
    return [statement for statement in statements if statement.lstrip().upper().startswith(verb)]


# --- tests ---------------------------------------------------------------------------------


class TestBulkCreate:
    async def test_ids_come_back_in_input_order(self, client):
        names = ["zulu", "alpha", "mike", "bravo"]

        ids = await bulk_create(client, [{"name": name} for name in names])

        assert len(ids) == len(names)
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        assert [(await fetch_device(client, id_))["name"] for id_ in ids] == names

    async def test_every_field_of_each_item_is_stored(self, client):
        owner = await create_user(client, name="ann")
        items = [
            {
                "name": " gw ",
                "serial_number": "SN-1",
                "model": "Pi 5",
                "status": "retired",
                "owner_id": owner["id"],
                "tags": ["lab", "lab", "eu"],
                "attributes": {"rack": 4, "meta": {"ok": True}},
                "last_seen_at": "2024-05-06T07:08:09+02:00",
            },
            {"name": "bare"},
        ]

        first, second = await bulk_create(client, items)

        stored = await fetch_device(client, first)
        assert stored["name"] == "gw"
        assert stored["owner"] == {"id": owner["id"], "name": "ann"}
        assert stored["tags"] == ["lab", "eu"]
        assert datetime.fromisoformat(stored["last_seen_at"]) == datetime.fromisoformat(
            items[0]["last_seen_at"]
        )
        for key in ("serial_number", "model", "status", "attributes"):
            assert stored[key] == items[0][key]
        bare = await fetch_device(client, second)
        assert (bare["status"], bare["tags"], bare["attributes"]) == ("active", [], {})
        assert bare["version"] == 1

    @pytest.mark.parametrize("offset", ["+23:59", "-16:00"])
    async def test_any_offset_python_takes_is_taken_as_one_device_takes_it(self, client, offset):
        """PostgreSQL reads offsets up to ±15:59 in the bulk write's JSON text: a bulk create and
        a bulk update were an unlocated 422 where every other write took the time."""
        seen = f"2024-05-06T05:08:09{offset}"
        one = await create_device(client, name="one", last_seen_at=seen)

        [created] = await bulk_create(client, [{"name": "bulk", "last_seen_at": seen}])
        updated = await client.patch(BULK, json=[{"id": one["id"], "last_seen_at": seen}])

        assert updated.status_code == 200, updated.text
        assert (await fetch_device(client, created))["last_seen_at"] == one["last_seen_at"]
        assert datetime.fromisoformat(one["last_seen_at"]) == datetime.fromisoformat(seen)

    async def test_the_maximum_batch_is_written_quickly(self, client):
        items = [{"name": f"d{i}", "serial_number": f"SN-{i}"} for i in range(BULK_MAX)]

        started = time.perf_counter()
        ids = await bulk_create(client, items)
        elapsed = time.perf_counter() - started

        assert elapsed < 3, f"{BULK_MAX} devices took {elapsed:.1f} s"
        assert len(ids) == BULK_MAX
        assert ids == sorted(set(ids))
        assert await device_count(client) == BULK_MAX
        assert (await fetch_device(client, ids[0]))["serial_number"] == "SN-0"
        assert (await fetch_device(client, ids[-1]))["serial_number"] == f"SN-{BULK_MAX - 1}"

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param([], id="empty-list"),
            pytest.param([{"name": "d"}] * (BULK_MAX + 1), id="10001-items"),
            pytest.param({"name": "d"}, id="object"),
            pytest.param("d", id="string"),
            pytest.param(None, id="null"),
        ],
    )
    async def test_body_that_is_not_1_to_10000_items_is_refused(self, client, body):
        await create_device(client)

        response = await client.post(BULK, json=body)

        assert_problem(response, 422)
        assert await device_count(client) == 1

    async def test_every_invalid_item_is_listed_and_nothing_is_written(self, client):
        existing = await stored_devices(client)
        items = [
            {"name": "ok"},
            {"name": ""},
            {"name": "ok"},
            {"name": "x", "status": "broken"},
            {"name": "x", "colour": "red"},
            {"name": "ok", "tags": "lab"},
        ]

        response = await client.post(BULK, json=items)

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(1, "name"), (3, "status"), (4, "colour"), (5, "tags")]
        assert await stored_devices(client) == existing

    @pytest.mark.parametrize(
        "repeat", [pytest.param("SN-1", id="same"), pytest.param("  SN-1 ", id="same-trimmed")]
    )
    async def test_serial_repeated_in_the_batch_names_the_later_items(self, client, repeat):
        items = [
            {"name": "a", "serial_number": "SN-1"},
            {"name": "b"},
            {"name": "c", "serial_number": repeat},
            {"name": "d"},
            {"name": "e", "serial_number": "SN-1"},
        ]

        response = await client.post(BULK, json=items)

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(2, "serial_number"), (4, "serial_number")]
        assert await device_count(client) == 0

    async def test_devices_without_serial_do_not_repeat(self, client):
        ids = await bulk_create(client, [{"name": "a"}, {"name": "b", "serial_number": None}])

        assert len(ids) == 2

    async def test_serial_already_registered_is_a_conflict_naming_its_items(self, client):
        await create_device(client, serial_number="SN-1")
        await create_device(client, serial_number="SN-3")

        response = await client.post(
            BULK,
            json=[
                {"name": "a", "serial_number": "SN-3"},
                {"name": "b", "serial_number": "SN-2"},
                {"name": "c", "serial_number": "SN-1"},
            ],
        )

        problem = assert_problem(response, 409, "serial_number is already registered")
        assert problem["field"] == "serial_number"
        assert bad_items(problem) == [(0, "serial_number"), (2, "serial_number")]
        assert await device_count(client) == 2

    async def test_a_serial_already_registered_answers_before_an_unknown_owner(self, client):
        """As the README says: PostgreSQL finds the taken serial as the rows are written, the
        missing owner at the statement's end."""
        await create_device(client, serial_number="SN-1")

        response = await client.post(
            BULK,
            json=[{"name": "a", "owner_id": 999_999}, {"name": "b", "serial_number": "SN-1"}],
        )

        problem = assert_problem(response, 409, "serial_number is already registered")
        assert bad_items(problem) == [(1, "serial_number")]
        assert await device_count(client) == 1

    async def test_unknown_owner_is_refused(self, client):
        owner = await create_user(client)

        response = await client.post(
            BULK, json=[{"name": "a", "owner_id": owner["id"]}, {"name": "b", "owner_id": 999_999}]
        )

        problem = assert_problem(response, 422)
        assert "owner_id" in problem["detail"]
        assert [error["loc"] for error in problem["errors"]] == [["body", 1, "owner_id"]]
        assert await device_count(client) == 0

    async def test_runs_one_insert(self, client, statements):
        owner = await create_user(client)
        items = [{"name": f"d{i}", "owner_id": owner["id"], "tags": ["t"]} for i in range(50)]
        statements.clear()

        await bulk_create(client, items)

        assert len(starting_with(statements, "INSERT")) == 1
        assert len(statements) == 1


class TestBulkUpdate:
    @pytest.fixture
    async def devices(self, client) -> list[dict[str, Any]]:
        owner = await create_user(client, name="ann")
        return [
            await create_device(
                client,
                name=f"d{i}",
                serial_number=f"SN-{i}",
                model="Pi 4",
                status="active",
                owner_id=owner["id"],
                tags=["lab"],
                attributes={"rack": i},
                last_seen_at="2024-01-01T00:00:00Z",
            )
            for i in range(3)
        ]

    async def test_only_the_fields_sent_change(self, client, devices):
        first, second, untouched = devices

        response = await bulk_update(
            client,
            [
                {"id": second["id"], "model": "Pi 5", "tags": ["edge", "eu"]},
                {"id": first["id"], "status": "retired", "attributes": {"room": "B"}},
            ],
        )

        assert response.status_code == 200, response.text
        assert response.json() == {"ids": [second["id"], first["id"]]}
        expected = [
            {**first, "status": "retired", "attributes": {"room": "B"}, "version": 2},
            {**second, "model": "Pi 5", "tags": ["edge", "eu"], "version": 2},
            untouched,
        ]
        stored = await stored_devices(client)
        assert [{**device, "updated_at": None} for device in stored] == [
            {**device, "updated_at": None} for device in expected
        ]

    @pytest.mark.parametrize(
        "same",
        [
            pytest.param({}, id="nothing"),
            pytest.param({"name": "d1", "status": "active"}, id="same-values"),
            pytest.param({"tags": ["lab"], "attributes": {"rack": 1}}, id="same-collections"),
        ],
    )
    async def test_version_is_bumped_only_where_something_changed(self, client, devices, same):
        changed, unchanged, _ = devices

        response = await bulk_update(
            client, [{"id": changed["id"], "name": "renamed"}, {"id": unchanged["id"], **same}]
        )

        assert response.status_code == 200, response.text
        assert (await fetch_device(client, changed["id"]))["version"] == 2
        assert await fetch_device(client, unchanged["id"]) == unchanged

    async def test_null_clears_the_optional_fields(self, client, devices):
        device = devices[0]
        cleared = {"serial_number": None, "model": None, "owner_id": None, "last_seen_at": None}

        response = await bulk_update(client, [{"id": device["id"], **cleared}])

        assert response.status_code == 200, response.text
        stored = await fetch_device(client, device["id"])
        assert {key: stored[key] for key in cleared} == cleared
        assert stored["owner"] is None
        assert (stored["name"], stored["tags"]) == (device["name"], device["tags"])

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            pytest.param({"name": None}, "name", id="name-null"),
            pytest.param({"status": None}, "status", id="status-null"),
            pytest.param({"tags": None}, "tags", id="tags-null"),
            pytest.param({"name": ""}, "name", id="name-empty"),
            pytest.param({"version": 9}, "version", id="version"),
        ],
    )
    async def test_invalid_item_changes_nothing(self, client, devices, change, field):
        first, second, _ = devices

        response = await bulk_update(
            client, [{"id": first["id"], "model": "Pi 5"}, {"id": second["id"], **change}]
        )

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(1, field)]
        assert await stored_devices(client) == devices

    @pytest.mark.parametrize(
        "item", [pytest.param({}, id="missing"), pytest.param({"id": 0}, id="zero")]
    )
    async def test_item_without_a_valid_id_is_refused(self, client, devices, item):
        response = await bulk_update(client, [{"id": devices[0]["id"]}, {**item, "name": "x"}])

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(1, "id")]
        assert await stored_devices(client) == devices

    async def test_unknown_id_changes_nothing(self, client, devices):
        first, second, third = devices
        missing = third["id"] + 1000

        response = await bulk_update(
            client,
            [
                {"id": first["id"], "name": "renamed"},
                {"id": missing, "name": "ghost"},
                {"id": second["id"], "status": "retired"},
            ],
        )

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(1, "id")]
        assert await stored_devices(client) == devices

    async def test_repeated_id_is_refused(self, client, devices):
        first, second, _ = devices

        response = await bulk_update(
            client,
            [
                {"id": first["id"], "name": "a"},
                {"id": second["id"], "name": "b"},
                {"id": first["id"], "name": "c"},
            ],
        )

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(2, "id")]
        assert await stored_devices(client) == devices

    async def test_serial_conflict_changes_nothing(self, client, devices):
        first, second, _ = devices

        response = await bulk_update(
            client,
            [
                {"id": first["id"], "name": "renamed", "serial_number": "SN-0"},  # its own
                {"id": second["id"], "serial_number": "SN-2"},  # registered to another device
            ],
        )

        problem = assert_problem(response, 409, "serial_number is already registered")
        assert bad_items(problem) == [(1, "serial_number")]
        assert await stored_devices(client) == devices

    async def test_a_serial_conflict_tells_a_token_nothing_of_another_users_device(self, client):
        """Ann's token learnt that Bob's device 3 had serial SN-B1: naming its id with that
        serial left the item out of the conflict, as naming her own device's would."""
        ann, bob = [await create_user(client, name=name) for name in ("ann", "bob")]
        anns = await create_device(client, serial_number="SN-A", owner_id=ann["id"])
        bobs = await create_device(client, serial_number="SN-B", owner_id=bob["id"])
        other = await create_device(client, serial_number="SN-C", owner_id=bob["id"])
        admin = await new_token(client, user_id=ann["id"], admin=True)
        anns_token = await new_token(client, as_token=admin, user_id=ann["id"])

        answers = [
            await client.patch(
                BULK,
                json=[
                    {"id": anns["id"], "serial_number": "SN-C"},  # a conflict, for the 409
                    {"id": probed, "serial_number": "SN-B"},
                ],
                headers=bearer(anns_token),
            )
            for probed in (bobs["id"], other["id"], 999_999)
        ]

        for answer in answers:
            problem = assert_problem(answer, 409, "serial_number is already registered")
            assert bad_items(problem) == [(0, "serial_number"), (1, "serial_number")]

    async def test_a_tokens_create_names_its_item_whose_serial_another_user_holds(self, client):
        ann, bob = [await create_user(client, name=name) for name in ("ann", "bob")]
        await create_device(client, serial_number="S-1", owner_id=ann["id"])
        admin = await new_token(client, user_id=ann["id"], admin=True)
        bobs_token = await new_token(client, as_token=admin, user_id=bob["id"])

        response = await client.post(
            BULK,
            json=[{"name": "ok", "serial_number": "S-2"}, {"name": "x", "serial_number": "S-1"}],
            headers=bearer(bobs_token),
        )

        problem = assert_problem(response, 409, "serial_number is already registered")
        assert bad_items(problem) == [(1, "serial_number")]

    async def test_unknown_owner_changes_nothing(self, client, devices):
        first, second, _ = devices

        response = await bulk_update(
            client, [{"id": first["id"], "name": "renamed"}, {"id": second["id"], "owner_id": 999}]
        )

        problem = assert_problem(response, 422)
        assert [error["loc"] for error in problem["errors"]] == [["body", 1, "owner_id"]]
        assert await stored_devices(client) == devices

    async def test_an_unknown_owner_is_named_before_an_unknown_id(self, client, devices):
        """The owner of an id not found broke no constraint: the 422 named the id, not the
        owner, unlike the same owner given to a device that exists."""
        first, _, _ = devices

        response = await bulk_update(
            client, [{"id": first["id"], "model": "x"}, {"id": 999_999, "owner_id": 999}]
        )

        problem = assert_problem(response, 422)
        assert [error["loc"] for error in problem["errors"]] == [["body", 1, "owner_id"]]
        assert await stored_devices(client) == devices

    async def test_a_serial_number_repeated_in_the_request_names_the_item(self, client, devices):
        first, second, _ = devices

        response = await bulk_update(
            client,
            [{"id": first["id"], "serial_number": "X"}, {"id": second["id"], "serial_number": "X"}],
        )

        problem = assert_problem(response, 422)
        assert [error["loc"] for error in problem["errors"]] == [["body", 1, "serial_number"]]
        assert await stored_devices(client) == devices

    @pytest.mark.parametrize(
        "body",
        [pytest.param([], id="empty-list"), pytest.param([{"id": 1}] * (BULK_MAX + 1), id="10001")],
    )
    async def test_body_that_is_not_1_to_10000_items_is_refused(self, client, devices, body):
        response = await bulk_update(client, body)

        assert_problem(response, 422)
        assert await stored_devices(client) == devices


class TestBulkDelete:
    async def test_listed_devices_are_deleted(self, client):
        kept, *doomed = [await create_device(client, name=f"d{i}") for i in range(4)]

        response = await bulk_delete(client, [device["id"] for device in doomed])

        assert response.status_code == 204
        assert response.content == b""
        assert await stored_devices(client) == [kept]

    async def test_unknown_id_deletes_nothing(self, client):
        devices = [await create_device(client, name=f"d{i}") for i in range(3)]
        ids = [devices[0]["id"], devices[2]["id"] + 1000, devices[1]["id"]]

        response = await bulk_delete(client, ids)

        problem = assert_problem(response, 422)
        # The items are the ids: the error is the item's own, at ["body", 1] (it was at
        # ["body", 1, "id"], a field no item has).
        assert bad_items(problem) == [(1, None)]
        assert problem["detail"] == "body.1: Device not found"
        assert await stored_devices(client) == devices

    async def test_repeated_id_is_refused(self, client):
        """As in a bulk PATCH, a repeat is a mistake to point out (it was deleted once, 204)."""
        devices = [await create_device(client, name=f"d{i}") for i in range(2)]
        ids = [devices[0]["id"], devices[1]["id"], devices[0]["id"]]

        response = await bulk_delete(client, ids)

        problem = assert_problem(response, 422)
        assert bad_items(problem) == [(2, None)]
        assert await stored_devices(client) == devices

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param([], id="empty-list"),
            pytest.param([1] * (BULK_MAX + 1), id="10001-ids"),
            pytest.param([0], id="zero"),
            pytest.param([2**63], id="beyond-bigint"),
            pytest.param(["abc"], id="word"),
            pytest.param([True], id="boolean"),
            pytest.param({"ids": [1]}, id="object"),
        ],
    )
    async def test_body_that_is_not_a_list_of_ids_is_refused(self, client, body):
        devices = [await create_device(client)]

        response = await bulk_delete(client, body)

        assert_problem(response, 422)
        assert await stored_devices(client) == devices


class TestHeartbeat:
    async def test_sets_last_seen_to_now_without_a_body(self, client):
        device = await create_device(client)
        assert device["last_seen_at"] is None

        response = await client.post(heartbeat_url(device["id"]))

        assert response.status_code == 204
        assert response.content == b""
        seen = (await fetch_device(client, device["id"]))["last_seen_at"]
        assert seen is not None
        # Inside the test's one transaction, now() is when that transaction began.
        assert datetime.fromisoformat(seen) >= datetime.fromisoformat(device["created_at"])

    async def test_replaces_an_older_last_seen(self, client):
        device = await create_device(client, last_seen_at="2001-01-01T00:00:00Z")

        await client.post(heartbeat_url(device["id"]))

        seen = (await fetch_device(client, device["id"]))["last_seen_at"]
        assert datetime.fromisoformat(seen) >= datetime.fromisoformat(device["created_at"])

    async def test_leaves_other_devices_alone(self, client):
        device, other = await create_device(client), await create_device(client)

        await client.post(heartbeat_url(device["id"]))

        assert await fetch_device(client, other["id"]) == other

    async def test_unknown_id_is_not_found(self, client):
        device = await create_device(client)

        response = await client.post(heartbeat_url(device["id"] + 1))

        assert_problem(response, 404, "Device not found")

    @pytest.mark.parametrize("device_id", BAD_IDS)
    async def test_bad_id_is_refused(self, client, device_id):
        response = await client.post(heartbeat_url(device_id))

        assert_problem(response, 422)

    async def test_runs_one_update(self, client, statements):
        device = await create_device(client)
        statements.clear()

        await client.post(heartbeat_url(device["id"]))

        assert len(statements) == 1
        assert starting_with(statements, "UPDATE") == statements


# --- concurrent bulk writes (a real server) ----------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_a_deadlock_is_a_409_to_send_again(committed_database_url: URL, method: str) -> None:
    """A bulk delete's 409 was not in the OpenAPI schema."""
    url = committed_database_url.render_as_string(hide_password=False)
    holder = await asyncpg_connection(committed_database_url)
    try:
        # PostgreSQL looks for a deadlock once, deadlock_timeout after a wait begins: the app's
        # sessions look after 5 s (time for the holder to close the cycle), the holder's after
        # 30, so the request is the one undone.
        database = committed_database_url.database
        await holder.execute(f"ALTER DATABASE {database} SET deadlock_timeout = '5s'")
        await holder.execute("SET deadlock_timeout = '30s'")
        with devreg_server(DATABASE_URL=url) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                created = await client.post(BULK, json=[{"name": "first"}, {"name": "second"}])
                first, second = created.json()["ids"]
                async with holder.transaction():
                    await holder.execute("UPDATE devices SET model = 'held' WHERE id = $1", second)
                    body = (
                        [{"id": first, "model": "m"}, {"id": second}]
                        if method == "PATCH"
                        else [first, second]
                    )
                    patching = asyncio.ensure_future(client.request(method, BULK, json=body))
                    await waiting_for_a_lock(holder)  # it holds `first`, waits for `second`
                    await holder.execute("UPDATE devices SET model = 'held' WHERE id = $1", first)
                    response = await patching
                stored = [(await client.get(f"{DEVICES}/{id_}")).json() for id_ in (first, second)]
                schema = (await client.get("/openapi.json")).json()
    finally:
        await holder.close()

    assert "409" in schema["paths"]["/api/v1/devices/bulk"][method.lower()]["responses"]
    problem = assert_problem(response, 409)
    assert problem["type"].endswith(":concurrent-write")
    assert response.headers["Retry-After"] == "1"
    assert [device["model"] for device in stored] == ["held", "held"]


async def test_bulk_writes_naming_devices_in_other_orders_do_not_deadlock(
    committed_database_url: URL,
) -> None:
    url = committed_database_url.render_as_string(hide_password=False)
    statuses: Counter[int] = Counter()
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            for _ in range(5):
                ids = (await client.post(BULK, json=[{"name": "d"}] * 200)).json()["ids"]
                responses = await asyncio.gather(
                    client.patch(BULK, json=[{"id": id_, "model": "a"} for id_ in reversed(ids)]),
                    client.request("DELETE", BULK, json=ids),
                    client.patch(BULK, json=[{"id": id_, "model": "b"} for id_ in ids]),
                    client.patch(BULK, json=[{"id": id_, "model": "c"} for id_ in reversed(ids)]),
                )
                statuses.update(response.status_code for response in responses)

    assert set(statuses) <= {200, 204, 422}  # 422: the devices were deleted first
    assert statuses[204] == 5


async def test_a_tokens_bulk_write_waits_for_no_other_users_device(
    committed_database_url: URL,
) -> None:
    """Only the devices a write may touch are locked: another user's, held elsewhere, does not
    hold up a token's bulk write that names it (it is not found, as if it did not exist)."""
    url = committed_database_url.render_as_string(hide_password=False)
    with devreg_server(DATABASE_URL=url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            ann, bob = [(await client.post(USERS, json={"name": n})).json() for n in ("a", "b")]
            anns, bobs = [
                (await client.post(DEVICES, json={"name": "d", "owner_id": user["id"]})).json()
                for user in (ann, bob)
            ]
            admin = (await client.post(TOKENS, json={"user_id": ann["id"], "admin": True})).json()
            writer = await client.post(
                TOKENS,
                json={"user_id": bob["id"]},
                headers={"Authorization": f"Bearer {admin['token']}"},
            )
            bobs_token = {"Authorization": f"Bearer {writer.json()['token']}"}
            holder = await asyncpg_connection(committed_database_url)
            try:
                async with holder.transaction():
                    hold = "SELECT 1 FROM devices WHERE id = $1 FOR UPDATE"
                    await holder.execute(hold, anns["id"])
                    both = [bobs["id"], anns["id"]]
                    patched = await client.patch(
                        BULK, json=[{"id": id_} for id_ in both], headers=bobs_token, timeout=5
                    )
                    deleted = await client.request(
                        "DELETE", BULK, json=both, headers=bobs_token, timeout=5
                    )
            finally:
                await holder.close()

    for response in (patched, deleted):
        assert [index for index, _ in bad_items(assert_problem(response, 422))] == [1]
