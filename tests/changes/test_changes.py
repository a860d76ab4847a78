"""The change log: every create, update and delete of a device or user, in the same transaction."""

from datetime import timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from devreg.changes.service import prune_changes
from devreg.db.session import UnitOfWork
from tests.api import (
    DEVICES,
    USERS,
    assert_problem,
    create_device,
    create_user,
    deletes_fetching_rows,
    explain_listing,
    settle,
)
from tests.auth.test_tokens import bearer, new_token

CHANGES = "/api/v1/changes"


async def changes(
    client: AsyncClient, url: str = CHANGES, headers: dict[str, str] | None = None, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(
        url, params={"sort": "id", "limit": 1000, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def history(device_id: int) -> str:
    return f"{DEVICES}/{device_id}/changes"


async def user_and_device_of_one_id(
    client: AsyncClient, connection: AsyncConnection
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user and a device (not the user's) with the same id: both id sequences moved on to the
    same value (forward only, as sequences ignore the test's rollback)."""
    await connection.execute(
        text(
            "SELECT setval(pg_get_serial_sequence('users', 'id'), n),"
            " setval(pg_get_serial_sequence('devices', 'id'), n)"
            " FROM (SELECT greatest(nextval(pg_get_serial_sequence('users', 'id')),"
            " nextval(pg_get_serial_sequence('devices', 'id'))) AS n) AS moved"
        )
    )
    user = await create_user(client, name="ann")
    device = await create_device(client, name="not-anns")
    assert user["id"] == device["id"]
    return user, device


class TestDeviceChanges:
    async def test_create_records_every_field_and_the_request(self, client: AsyncClient) -> None:
        response = await client.post(
            DEVICES, json={"name": "pi", "tags": ["lab"]}, headers={"X-Request-ID": "req-1"}
        )
        device = response.json()
        [change] = await changes(client, history(device["id"]))
        assert change["action"] == "create"
        assert change["object_type"] == "device"
        assert change["object_id"] == device["id"]
        assert change["request_id"] == "req-1"
        assert change["before"] is None
        assert change["after"]["name"] == "pi"
        assert change["after"]["tags"] == ["lab"]
        assert "search_text" not in change["after"]
        assert "version" not in change["after"]

    async def test_update_records_only_what_changed(self, client: AsyncClient) -> None:
        device = await create_device(client, name="pi", model="m1")
        await client.patch(f"{DEVICES}/{device['id']}", json={"name": "pi-2", "model": "m1"})
        update = (await changes(client, history(device["id"])))[-1]
        assert update["action"] == "update"
        assert update["before"] == {"name": "pi"}
        assert update["after"] == {"name": "pi-2"}

    async def test_delete_records_every_field_before(self, client: AsyncClient) -> None:
        device = await create_device(client, name="pi")
        await client.delete(f"{DEVICES}/{device['id']}")
        delete = (await changes(client, history(device["id"])))[-1]
        assert delete["action"] == "delete"
        assert delete["before"]["name"] == "pi"
        assert delete["after"] is None

    async def test_heartbeats_and_no_op_writes_are_not_changes(self, client: AsyncClient) -> None:
        device = await create_device(client, name="pi")
        await client.post(f"{DEVICES}/{device['id']}/heartbeat")
        await client.patch(f"{DEVICES}/{device['id']}", json={"name": "pi"})
        assert [c["action"] for c in await changes(client, history(device["id"]))] == ["create"]

    async def test_refused_writes_leave_no_record(self, client: AsyncClient) -> None:
        device = await create_device(client, name="pi", serial_number="S1")
        other = await create_device(client, name="pi2")
        taken = await client.patch(f"{DEVICES}/{other['id']}", json={"serial_number": "S1"})
        assert_problem(taken, 409)
        stale = await client.patch(
            f"{DEVICES}/{device['id']}", json={"name": "x"}, headers={"If-Match": '"9"'}
        )
        assert_problem(stale, 412)
        assert_problem(await client.post(DEVICES, json={"name": "p", "serial_number": "S1"}), 409)
        assert [c["action"] for c in await changes(client)] == ["create", "create"]

    async def test_bulk_writes_record_each_device(self, client: AsyncClient) -> None:
        created = await client.post(f"{DEVICES}/bulk", json=[{"name": "a"}, {"name": "b"}])
        ids = created.json()["ids"]
        await client.patch(f"{DEVICES}/bulk", json=[{"id": i, "status": "retired"} for i in ids])
        await client.request("DELETE", f"{DEVICES}/bulk", json=ids)
        recorded = await changes(client)
        assert [(c["action"], c["object_id"]) for c in recorded] == [
            ("create", ids[0]), ("create", ids[1]),
            ("update", ids[0]), ("update", ids[1]),
            ("delete", ids[0]), ("delete", ids[1]),
        ]  # fmt: skip
        assert recorded[2]["before"] == {"status": "active"}
        assert recorded[2]["after"] == {"status": "retired"}


class TestUserChanges:
    async def test_user_writes_and_cascades_are_recorded(self, client: AsyncClient) -> None:
        user = await create_user(client, name="ann")
        await client.patch(f"{USERS}/{user['id']}", json={"email": "ann@example.org"})
        device = await create_device(client, name="pi", owner_id=user["id"])
        await client.delete(f"{USERS}/{user['id']}", params={"cascade": "devices"})
        recorded = [(c["object_type"], c["action"], c["object_id"]) for c in await changes(client)]
        assert recorded == [
            ("user", "create", user["id"]),
            ("user", "update", user["id"]),
            ("device", "create", device["id"]),
            ("device", "delete", device["id"]),
            ("user", "delete", user["id"]),
        ]
        [update] = await changes(client, object_type="user", action="update")
        assert update["before"] == {"email": None}
        assert update["after"] == {"email": "ann@example.org"}


class TestReading:
    async def test_tokens_are_recorded_and_bound_what_is_seen(self, client: AsyncClient) -> None:
        ann = await create_user(client, name="ann")
        bob = await create_user(client, name="bob")
        anns_device = await create_device(client, name="ann-pi", owner_id=ann["id"])
        admin = await new_token(client, user_id=ann["id"], admin=True)
        writer = await new_token(client, as_token=admin, user_id=bob["id"])
        created = await client.post(DEVICES, json={"name": "bob-pi"}, headers=bearer(writer))
        bobs = created.json()["id"]

        everything = await client.get(CHANGES, params={"sort": "id"}, headers=bearer(admin))
        last = everything.json()["items"][-1]
        assert (last["object_id"], last["user_id"]) == (bobs, bob["id"])
        assert last["token_id"] is not None
        own = await client.get(CHANGES, params={"object_type": "device"}, headers=bearer(writer))
        assert [c["object_id"] for c in own.json()["items"]] == [bobs]
        hidden = await client.get(history(anns_device["id"]), headers=bearer(writer))
        assert_problem(hidden, 404)
        seen = await client.get(history(bobs), headers=bearer(writer))
        assert [c["action"] for c in seen.json()["items"]] == ["create"]

    async def test_a_user_sees_the_history_of_the_devices_the_user_owns(
        self, client: AsyncClient
    ) -> None:
        ann = await create_user(client, name="ann")
        bob = await create_user(client, name="bob")
        bobs_before_tokens = await create_device(client, name="bob-1", owner_id=bob["id"])
        await create_device(client, name="ann-1", owner_id=ann["id"])
        admin = await new_token(client, user_id=ann["id"], admin=True)
        reader = await new_token(client, as_token=admin, user_id=bob["id"], scope="read")
        given = await client.post(
            DEVICES, json={"name": "bob-2", "owner_id": bob["id"]}, headers=bearer(admin)
        )

        seen = await client.get(
            CHANGES, params={"object_type": "device", "sort": "id"}, headers=bearer(reader)
        )

        expected = [bobs_before_tokens["id"], given.json()["id"]]
        assert [c["object_id"] for c in seen.json()["items"]] == expected

    async def test_what_the_users_admin_token_did_stays_hidden_from_its_other_tokens(
        self, client: AsyncClient
    ) -> None:
        """Ann's plain token saw, as "changes its user made", every device and user her admin
        token had written: other users' devices (attributes and all) and emails."""
        ann = await create_user(client, name="ann")
        bob = await create_user(client, name="bob")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        plain = await new_token(client, as_token=admin, user_id=ann["id"])
        await client.post(
            DEVICES, json={"name": "bob-secret", "owner_id": bob["id"]}, headers=bearer(admin)
        )
        await client.post(USERS, json={"name": "carol"}, headers=bearer(admin))
        await client.patch(f"{USERS}/{ann['id']}", json={"name": "ann b"}, headers=bearer(admin))
        mine = await client.post(DEVICES, json={"name": "ann-pi"}, headers=bearer(plain))

        seen = await client.get(CHANGES, params={"sort": "id"}, headers=bearer(plain))

        assert [(c["object_type"], c["action"], c["object_id"]) for c in seen.json()["items"]] == [
            ("user", "create", ann["id"]),  # her own record, whoever changed it
            ("user", "update", ann["id"]),
            ("device", "create", mine.json()["id"]),
        ]

    DEVICE_RECORDS = {"object_type": "device"}

    async def test_a_device_given_to_another_user_brings_none_of_its_past(
        self, client: AsyncClient
    ) -> None:
        """Bob, given Ann's device, read her whole time with it: names, attributes, her ids; and
        in the handover's `before`, her values of what it changed."""
        ann = await create_user(client, name="ann")
        bob = await create_user(client, name="bob")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        anns_token = await new_token(client, as_token=admin, user_id=ann["id"])
        bobs_token = await new_token(client, as_token=admin, user_id=bob["id"])
        device = await client.post(DEVICES, json={"name": "ann-pi"}, headers=bearer(anns_token))
        url = f"{DEVICES}/{device.json()['id']}"
        secret = {"attributes": {"wifi": "ann-home"}}
        await client.patch(url, json=secret, headers=bearer(anns_token))
        handover = {"owner_id": bob["id"], "attributes": {}}
        await client.patch(url, json=handover, headers=bearer(admin))
        await client.patch(url, json={"name": "bob-pi"}, headers=bearer(bobs_token))

        bobs_views = [
            await client.get(history(device.json()["id"]), headers=bearer(bobs_token)),
            await client.get(CHANGES, params=self.DEVICE_RECORDS, headers=bearer(bobs_token)),
        ]
        anns_views = [
            await client.get(history(device.json()["id"]), headers=bearer(anns_token)),
            await client.get(CHANGES, params=self.DEVICE_RECORDS, headers=bearer(anns_token)),
        ]

        admins_view = await client.get(history(device.json()["id"]), headers=bearer(admin))

        for view in bobs_views:
            assert [(c["action"], c["before"], c["after"]) for c in view.json()["items"]] == [
                ("update", {"name": "ann-pi"}, {"name": "bob-pi"}),
                ("update", None, handover),  # the handover itself, none of Ann's values
            ]
        assert admins_view.json()["items"][1]["before"] == {"owner_id": ann["id"], **secret}
        for view in anns_views:  # her time with it, kept
            newest, oldest = view.json()["items"]
            assert (newest["action"], newest["after"], oldest["action"]) == (
                "update",
                secret,
                "create",
            )

    async def test_a_deleted_devices_history_stays_with_its_owner(self, client) -> None:
        ann = await create_user(client, name="ann")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        plain = await new_token(client, as_token=admin, user_id=ann["id"])
        device = await client.post(
            DEVICES, json={"name": "ann-pi", "owner_id": ann["id"]}, headers=bearer(admin)
        )
        await client.delete(f"{DEVICES}/{device.json()['id']}", headers=bearer(admin))

        seen = [
            await client.get(CHANGES, params={"object_type": "device"}, headers=bearer(plain)),
            await client.get(history(device.json()["id"]), headers=bearer(plain)),
        ]

        for view in seen:
            assert [c["action"] for c in view.json()["items"]] == ["delete", "create"]
            assert view.json()["items"][0]["before"]["name"] == "ann-pi"

    async def test_a_device_with_no_history_and_no_row_is_not_found_by_anyone(self, client) -> None:
        """An admin (or the open API) got 200 and no records for an id never used, as if the
        device existed with no history: a mistyped id looked like a quiet device."""
        kept = await create_device(client, name="quiet")
        deleted = await create_device(client, name="gone")
        await client.delete(f"{DEVICES}/{deleted['id']}")

        never = await client.get(history(deleted["id"] + 1000))
        found = [await client.get(history(device["id"])) for device in (kept, deleted)]

        assert_problem(never, 404, "Device not found")
        assert [response.status_code for response in found] == [200, 200]
        assert [len(response.json()["items"]) for response in found] == [1, 2]

    async def test_a_users_token_sees_nothing_of_a_device_sharing_its_users_id(
        self, client: AsyncClient, connection: AsyncConnection
    ) -> None:
        user, device = await user_and_device_of_one_id(client, connection)
        admin = await new_token(client, user_id=user["id"], admin=True)
        plain = await new_token(client, as_token=admin, user_id=user["id"])

        seen = await changes(client, headers=bearer(plain))

        assert [(c["object_type"], c["object_id"]) for c in seen] == [("user", device["id"])]

    async def test_a_devices_history_holds_no_record_of_the_user_sharing_its_id(
        self, client: AsyncClient, connection: AsyncConnection
    ) -> None:
        _, device = await user_and_device_of_one_id(client, connection)

        seen = await changes(client, history(device["id"]))

        assert [(c["object_type"], c["action"]) for c in seen] == [("device", "create")]

    async def test_a_living_device_whose_records_were_pruned_has_an_empty_history(
        self, client: AsyncClient, connection: AsyncConnection
    ) -> None:
        device = await create_device(client, name="pi")
        await connection.execute(text("DELETE FROM changes"))

        response = await client.get(history(device["id"]))

        assert response.status_code == 200, response.text
        assert response.json()["items"] == []

    async def test_a_prune_fetches_none_of_the_records_it_deletes(
        self, client: AsyncClient, connection: AsyncConnection, sessionmaker, statements
    ) -> None:
        """With RETURNING, every pruned record's id came back to the command: 580 MB peak RSS
        for 1.65 million (a reviewer's measure)."""
        await create_device(client, name="old")
        await connection.execute(text("UPDATE changes SET at = now() - interval '100 days'"))
        await create_device(client, name="new")
        statements.reset()

        pruned = await prune_changes(UnitOfWork(sessionmaker), older_than=timedelta(days=90))

        assert pruned == 1
        assert [c["after"]["name"] for c in await changes(client)] == ["new"]
        assert deletes_fetching_rows(statements, "changes") == []

    @pytest.mark.parametrize("sort", ["-id", "id"])
    async def test_what_a_user_sees_is_found_by_index(self, client, connection, sort) -> None:
        """`IN (subquery)` made the rule a filter on every record of the log, read newest
        first: 440-514 ms a page at 2M records (a reviewer's measure); by index, 0.13 ms. Then
        `owner_id = N OR (object_type = 'user' AND object_id = N)` read the log's primary key
        backwards past every newer record, or sorted all the user's: 0.34-0.46 s a page for a
        user whose 300,000 records came before 2.7 million others."""
        ann = await create_user(client, name="ann")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        plain = await new_token(client, as_token=admin, user_id=ann["id"])
        await client.post(DEVICES, json={"name": "ann-pi"}, headers=bearer(plain))
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, owner_id, after)"
                " SELECT 'device', 900000 + g % 50, 'update', :ann, '{}'::jsonb"
                " FROM generate_series(1, 3000) AS g"
            ),
            {"ann": ann["id"]},
        )
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, user_id, owner_id, after)"
                " SELECT 'device', 1000 + g % 5000, 'update', 100 + g % 500, 100 + g % 500,"
                " '{}'::jsonb FROM generate_series(1, 20000) AS g"
            )
        )
        await settle(connection, "changes")

        plans = await explain_listing(
            client, connection, CHANGES, {"sort": sort, "count": "exact"}, headers=bearer(plain)
        )

        [page, count] = plans
        assert "ix_changes_reader_id" in page.indexes
        assert not page.node_types & {"Seq Scan", "Sort", "Incremental Sort"}
        assert "ix_changes_reader_id" in count.indexes
        for plan in plans:
            assert "SubPlan" not in str(plan.nodes)

    async def test_a_users_device_history_is_read_from_the_objects_index(
        self, client, connection
    ) -> None:
        """A device's history, read by its owner's token, is one object's records: the index on
        (object_type, object_id, id) serves it in order. Led by the reader, the page read the
        reader's index past every newer record of the user's other devices (54 ms for 600,000
        of them), or sorted all the device's."""
        ann = await create_user(client, name="ann")
        admin = await new_token(client, user_id=ann["id"], admin=True)
        plain = await new_token(client, as_token=admin, user_id=ann["id"])
        device = (await client.post(DEVICES, json={"name": "ann-pi"}, headers=bearer(plain))).json()
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, owner_id, after)"
                " SELECT 'device', :device, 'update', :ann, '{}'::jsonb"
                " FROM generate_series(1, 2000) AS g"
            ),
            {"device": device["id"], "ann": ann["id"]},
        )
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, owner_id, after)"
                " SELECT 'device', 900000 + g % 50, 'update', :ann, '{}'::jsonb"
                " FROM generate_series(1, 20000) AS g"
            ),
            {"ann": ann["id"]},
        )
        await settle(connection, "changes")

        plans = await explain_listing(
            client, connection, history(device["id"]), {"limit": 20}, headers=bearer(plain)
        )

        [page] = [plan for plan in plans if any(n.startswith("ix_changes") for n in plan.indexes)]
        assert "ix_changes_object_type_object_id_id" in page.indexes

    @pytest.mark.parametrize(
        ("params", "index"),
        [
            ({"object_type": "user"}, "ix_changes_object_type_id"),
            ({"action": "delete"}, "ix_changes_action_id"),
            ({"action": "update", "sort": "id"}, "ix_changes_action_id"),
            ({"user_id": 7, "sort": "id"}, "ix_changes_user_id_id"),
        ],
        ids=["type", "action", "action-oldest-first", "user-oldest-first"],
    )
    async def test_one_type_action_or_user_is_read_in_order_by_its_index(
        self, client, connection, params, index
    ) -> None:
        """Read from the primary key, the records of a type, action or user that all came
        before (or, oldest first, after) the others' filtered out every record on the way:
        0.29-0.37 s a page for the user records, or the deletes, under 2.9 million others;
        0.1 s for a user's or an action's records after 1.2 million others; by index, 0.05
        ms."""
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, before)"
                " SELECT 'user', g, 'delete', '{}'::jsonb FROM generate_series(1, 1000) AS g"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, user_id, after)"
                " SELECT 'device', 1000 + g % 5000, 'update', 7, '{}'::jsonb"
                " FROM generate_series(1, 20000) AS g"
            )
        )
        await settle(connection, "changes")

        [page] = await explain_listing(client, connection, CHANGES, params)

        assert index in page.indexes
        assert not page.node_types & {"Seq Scan", "Sort", "Incremental Sort"}

    async def test_an_objects_records_are_found_by_index_whatever_its_type(
        self, client, connection
    ) -> None:
        """`object_id` without `object_type` read the whole index of the two, its first
        column: 0.5 s at 3 million records (a reviewer's measure); naming both types, 0.2 ms."""
        user, device = await user_and_device_of_one_id(client, connection)
        await connection.execute(
            text(
                "INSERT INTO changes (object_type, object_id, action, after)"
                " SELECT 'device', 1000 + g, 'update', '{}'::jsonb"
                " FROM generate_series(1, 20000) AS g"
            )
        )
        await settle(connection, "changes")

        found = await changes(client, object_id=device["id"])
        plans = await explain_listing(client, connection, CHANGES, {"object_id": device["id"]})

        assert {(c["object_type"], c["object_id"]) for c in found} == {
            ("user", user["id"]), ("device", device["id"])
        }  # fmt: skip
        for plan in plans:
            conditions = [
                node.get("Index Cond", "")
                for node in plan.nodes
                if node.get("Index Name") == "ix_changes_object_type_object_id_id"
            ]
            assert conditions, plan.nodes
            assert all("object_type" in condition for condition in conditions), conditions

    async def test_filters_sort_and_pages(self, client: AsyncClient) -> None:
        for name in ("a", "b", "c"):
            await create_device(client, name=name)
        newest_first = (await client.get(CHANGES)).json()["items"]
        assert [c["after"]["name"] for c in newest_first] == ["c", "b", "a"]
        first = (await client.get(CHANGES, params={"limit": 2})).json()
        rest = await client.get(CHANGES, params={"limit": 2, "cursor": first["next_cursor"]})
        assert [c["after"]["name"] for c in first["items"] + rest.json()["items"]] == [
            "c", "b", "a"
        ]  # fmt: skip
        at = newest_first[0]["at"]
        assert len(await changes(client, since=at)) == 3
        assert await changes(client, until=at) == []
        assert await changes(client, action="delete") == []

    async def test_until_keeps_only_earlier_records(self, client: AsyncClient) -> None:
        """The records of one test's requests share a moment (its transaction's), so `until` is
        judged here against moments far from it."""
        await create_device(client, name="pi")
        assert await changes(client, until="2000-01-01T00:00:00Z") == []
        assert len(await changes(client, until="2999-01-01T00:00:00Z")) == 1

    @pytest.mark.parametrize("moment", ["0.5", "253402300799", "1e9", "-1"])
    @pytest.mark.parametrize(
        ("url", "parameter"),
        [
            (CHANGES, "until"),
            (USERS, "created_before"),
            (DEVICES, "created_after"),
            (DEVICES, "last_seen_before"),
        ],
    )
    async def test_a_number_is_not_a_moment(self, client, url, parameter, moment) -> None:
        """A number names no time zone; it was read as seconds or milliseconds since 1970, which
        of the two by its size (253402300799 as milliseconds: 1978, not 9999)."""
        response = await client.get(url, params={parameter: moment})
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["loc"] == ["query", parameter]
        assert "not a number" in problem["detail"]

    async def test_bad_parameters_are_problems(self, client: AsyncClient) -> None:
        for params in ({"object_type": "token"}, {"since": "yesterday"}, {"sort": "at"},
                       {"what": "1"}):  # fmt: skip
            response = await client.get(CHANGES, params=params)
            assert response.status_code in (400, 422), params
            assert_problem(response, response.status_code)

    @pytest.mark.parametrize("parameter", ["object_type", "object_id"])
    async def test_a_devices_history_takes_no_object_filter(self, client, parameter) -> None:
        """The path names the object: a filter naming another would be quietly overruled."""
        device = await create_device(client)
        value = {"object_type": "user", "object_id": "999999"}[parameter]

        response = await client.get(f"{DEVICES}/{device['id']}/changes", params={parameter: value})

        assert assert_problem(response, 400)["parameter"] == parameter
